"""Jobs and devices, kept in Redis (never only in a process's memory); no torch here.

A job moves through ``created -> initializing -> ready -> training -> completed | failed |
stopped``; a failure carries its reason. Every transition is a compare-and-set on the
job's status, so two API processes (or an API and a worker) never race a job into an
impossible state. Devices are the pool's (``control.devices``): a job has the devices registered
for it (the original flow) and those of its plan.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterable, Iterator

import redis

from .. import keys
from ..config import JobConfig
from ..errors import Conflict, NotFound
from .devices import DeviceRegistry

__all__ = ["ACTIVE", "TRANSITIONS", "JobStore", "conflict_message"]

TRANSITIONS: dict[str, tuple[str, ...]] = {
    "created": ("initializing",),
    "initializing": ("ready", "failed"),
    # Back to created when the devices change: the plan no longer fits them.
    "ready": ("initializing", "training", "created"),
    "training": ("completed", "failed", "stopped", "recovering"),
    # A device was lost mid-run: the API waits for it (or another), loads the last checkpoint
    # onto the devices it has, and trains on; stop still wins.
    "recovering": ("training", "failed", "stopped"),
    # Training again continues from the weights the workers hold (all stages took the same
    # steps). A stopped or failed run leaves stages at different steps: initialize again.
    "completed": ("initializing", "training", "created"),
    "failed": ("initializing", "created"),
    "stopped": ("initializing", "created"),
}
ACTIVE = ("initializing", "training", "recovering")


def _now() -> float:
    return time.time()


class JobStore:
    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.devices = DeviceRegistry(r)

    # ------------------------------------------------------------------ jobs
    def create(self, config: JobConfig) -> str:
        job_id = uuid.uuid4().hex[:12]
        now = _now()
        pipe = self.r.pipeline()
        pipe.hset(
            keys.job(job_id),
            mapping={"job_id": job_id, "status": "created", "config": json.dumps(config.to_dict()),
                     "created_at": now, "updated_at": now, "error": ""},
        )  # fmt: skip
        pipe.zadd(keys.JOBS, {job_id: now})
        _state_event(pipe, job_id, None, "created", "", "")
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> dict:
        jobs = self.many([job_id])
        if not jobs:
            raise NotFound(f"job {job_id!r} does not exist")
        return jobs[0]

    def many(self, ids: list[str]) -> list[dict]:
        """The jobs of ``ids`` that exist, with their devices: three round trips to Redis in all."""
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(keys.job(job_id))
            pipe.smembers(keys.job_devices(job_id))
        replies = pipe.execute()
        jobs, wanted = [], []
        for raw, own in zip(replies[::2], replies[1::2], strict=True):
            if not raw:  # deleted meanwhile
                continue
            job = _parse(raw)
            planned = [str(s["device_id"]) for s in job.get("plan") or () if s.get("device_id") is not None]
            job["devices"] = list(dict.fromkeys(sorted(i.decode() for i in own) + planned))
            wanted += job["devices"]
            jobs.append(job)
        found = {d["device_id"]: d for d in self.devices.some(list(dict.fromkeys(wanted)))}
        for job in jobs:  # the devices registered for the job, then those of its plan, with their leases
            devices = [found[i] for i in job["devices"] if i in found]
            job["devices"] = sorted(devices, key=lambda d: d.get("registered_at", 0))
        return jobs

    def list(self, offset: int = 0, limit: int = 50) -> tuple[int, list[dict]]:
        """``(total, jobs)``: ``limit`` jobs from the ``offset``-th, oldest first."""
        total = self.r.zcard(keys.JOBS)
        ids = [i.decode() for i in self.r.zrange(keys.JOBS, offset, offset + limit - 1)]
        return total, self.many(ids)

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job["status"] in ACTIVE:
            raise Conflict(f"job {job_id} is {job['status']}: stop it (POST /api/network/stop/{job_id}) first")
        # The devices stay in the pool. Its devices set and every run's keys are under the job's key.
        found = list(self.r.scan_iter(match=keys.job_pattern(job_id), count=1000))
        self.r.delete(keys.job(job_id), *found)
        self.r.zrem(keys.JOBS, job_id)

    def transition(
        self,
        job_id: str,
        to: str,
        allowed_from: Iterable[str] | None = None,
        expect: dict[str, str] | None = None,
        **fields: object,
    ) -> dict:
        """Compare-and-set the status (and the ``expect`` fields, e.g. the run id); raises
        Conflict naming the current status when not allowed. Returns the old status and run id."""
        key = keys.job(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current = pipe.hget(key, "status")
                    if current is None:
                        raise NotFound(f"job {job_id!r} does not exist")
                    current = current.decode()
                    sources = tuple(allowed_from) if allowed_from is not None else _sources(to)
                    if current not in sources:
                        raise Conflict(conflict_message(job_id, current, to))
                    run_id = (pipe.hget(key, "run_id") or b"").decode()
                    for name, value in (expect or {}).items():
                        actual = (pipe.hget(key, name) or b"").decode()
                        if actual != value:
                            raise Conflict(f"job {job_id} has moved on: {name} is {actual!r}, not {value!r}")
                    mapping = {"status": to, "updated_at": _now()}
                    mapping.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()})
                    pipe.multi()
                    pipe.hset(key, mapping=mapping)
                    now_run = str(fields.get("run_id", run_id))
                    # A run starts (a train, a recovery) when the run id changes to a new one; a
                    # train whose tasks could not be sent puts the old id back, which starts nothing.
                    started = bool(now_run) and now_run != run_id and to == "training"
                    _state_event(pipe, job_id, current, to, now_run, str(fields.get("error", "")), started)
                    if to in ACTIVE:
                        pipe.sadd(keys.ACTIVE_JOBS, job_id)
                    else:
                        pipe.srem(keys.ACTIVE_JOBS, job_id)
                    pipe.execute()
                    return {"from": current, "to": to, "run_id": run_id}
                except redis.WatchError:
                    continue

    def set_fields(self, job_id: str, **fields: object) -> None:
        mapping = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
        self.r.hset(keys.job(job_id), mapping=mapping)

    # --------------------------------------------------------------- devices
    def attach(self, job_id: str, device_id: str) -> None:
        """Count a device among the job's own (the original flow: registered for the job). Its
        plan, made for other devices, is void unless the job is recovering (the newcomer joins
        its next plan)."""
        job = self.check_attachable(job_id)
        if job["status"] != "recovering":
            self._forget_plan(job)
        self.r.sadd(keys.job_devices(job_id), device_id)

    def check_attachable(self, job_id: str) -> dict:
        """The job, if devices may be registered for it now."""
        job = self.get(job_id)
        if job["status"] in ("initializing", "training"):
            raise Conflict(f"job {job_id} is {job['status']}: register devices before initializing it")
        return job

    def registered_devices(self, job_id: str) -> list[dict]:
        """The devices registered for the job (the original flow), by registration, with their leases."""
        ids = sorted(i.decode() for i in self.r.smembers(keys.job_devices(job_id)))
        return sorted(self.devices.some(ids), key=lambda d: d.get("registered_at", 0))

    def busy(self, except_job: str | None = None) -> dict[str, str]:
        """Device id -> the job (initializing, training or recovering) whose plan holds it, or that
        claimed it for the plan it is loading (``reserved``)."""
        out = {}
        for raw in self.r.smembers(keys.ACTIVE_JOBS):
            job_id = raw.decode()
            if job_id == except_job:
                continue
            plan, reserved = self.r.hmget(keys.job(job_id), "plan", "reserved")
            held = [str(stage["device_id"]) for stage in json.loads(plan or "[]")] + json.loads(reserved or "[]")
            out.update(dict.fromkeys(held, job_id))
        return out

    def index_active(self) -> None:
        """Put every active job in ``keys.ACTIVE_JOBS`` (transitions keep it; this rebuilds it)."""
        ids = [i.decode() for i in self.r.zrange(keys.JOBS, 0, -1)]
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "status")
        active = [j for j, status in zip(ids, pipe.execute(), strict=True) if status and status.decode() in ACTIVE]
        if active:
            self.r.sadd(keys.ACTIVE_JOBS, *active)

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Held while a job picks its devices and claims them (``reserved``), and while a device is
        deleted: two jobs never take the same free devices, and none takes one being deleted. A 409
        after waiting 15 s for it (a holder that died lets go after 30 s)."""
        lock = self.r.lock(keys.PLAN_LOCK, timeout=30, blocking_timeout=15)
        if not lock.acquire():
            raise Conflict(
                "another request has held the lock on choosing devices for 15 s (a job choosing its devices, "
                "or a device being deleted): try again"
            )
        try:
            yield
        finally:
            with contextlib.suppress(redis.exceptions.LockError):  # expired meanwhile (30 s): not ours now
                lock.release()

    def forget_device(self, device_id: str) -> None:
        """A device is leaving: refused while an active job's plan holds it; a ready job planned
        on it must be initialized again. Waits (up to 15 s, then a 409) while a job chooses devices."""
        with self.planning():  # not between a job's choice of it and its reservation
            holder = self.busy().get(device_id)
            if holder is not None:
                status = self.get(holder)["status"]
                raise Conflict(f"device {device_id} serves job {holder}, which is {status}: stop the job first")
            for raw in self.r.zrange(keys.JOBS, 0, -1):
                job_id = raw.decode()
                plan = self.r.hget(keys.job(job_id), "plan")
                if plan and any(str(s["device_id"]) == device_id for s in json.loads(plan)):
                    self._forget_plan(self.get(job_id))
            self.devices.delete(device_id)

    def _forget_plan(self, job: dict) -> None:
        """A plan made for other devices is void: the job must be initialized again."""
        if job.get("plan") and job["status"] != "created":
            try:
                self.transition(job["job_id"], "created", allowed_from=(job["status"],), plan="")
            except Conflict:  # moved on meanwhile; the caller's own check decides
                pass

    # ---------------------------------------------------------- teraflops
    def add_teraflops(self, rows: list[dict]) -> None:
        if rows:
            self.r.rpush(keys.TERAFLOPS, *[json.dumps(r) for r in rows])

    def teraflops(self) -> list[dict]:
        return [json.loads(r) for r in self.r.lrange(keys.TERAFLOPS, 0, -1)]


# A job's state stream keeps its last transitions; a job makes a handful per run.
STATE_EVENTS_KEPT = 1000


def _state_event(
    pipe: redis.client.Pipeline, job_id: str, before: str | None, to: str, run: str, error: str, started: bool = False
) -> None:
    """Queue the job's state change on its event stream (in the transition's own transaction);
    ``started``: the change starts run ``run`` (its events follow in the job's feed)."""
    event = {"type": "state", "time": _now(), "from": before, "status": to, "run_id": run or None,
             "error": error or None, "new_run": started}  # fmt: skip
    pipe.xadd(keys.job_events(job_id), {"e": json.dumps(event)}, maxlen=STATE_EVENTS_KEPT, approximate=True)


def _parse(raw: dict[bytes, bytes]) -> dict:
    job = {k.decode(): v.decode() for k, v in raw.items()}
    for field in ("config", "plan", "train_config", "final", "recoveries", "history", "unit_costs"):
        if job.get(field):
            job[field] = json.loads(job[field])
    for field in ("created_at", "updated_at"):
        job[field] = float(job[field])
    for field in ("step", "start_step"):  # steps trained: where the workers' state is, where a run began
        if job.get(field):
            job[field] = int(job[field])
    return job


def _sources(to: str) -> tuple[str, ...]:
    return tuple(s for s, targets in TRANSITIONS.items() if to in targets)


def conflict_message(job_id: str, current: str, to: str) -> str:
    if current == to:
        return f"job {job_id} is already {current}"
    if to == "training" and current in ("created", "failed"):
        advice = f"initialize it first (POST /api/network/initialize/{job_id})"
    elif to == "training" and current == "stopped":
        advice = (
            "a stopped run leaves its stages at different steps: "
            f"initialize it again (POST /api/network/initialize/{job_id})"
        )
    elif to == "training" and current == "initializing":
        advice = "wait until initialization has finished (status ready)"
    elif to == "stopped":
        advice = "only a training job can be stopped"
    elif to == "initializing" and current == "training":
        advice = f"stop it first (POST /api/network/stop/{job_id})"
    else:
        advice = f"allowed from: {', '.join(_sources(to))}"
    return f"job {job_id} is {current}, cannot move to {to}: {advice}"
