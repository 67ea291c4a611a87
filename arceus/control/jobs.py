"""Jobs and devices, kept in Redis (never only in a process's memory); no torch here.

A job moves through ``created -> initializing -> ready -> training -> completed | failed |
stopped``; a failure carries its reason. Every transition is a compare-and-set on the
job's status, so two API processes (or an API and a worker) never race a job into an
impossible state. Devices get sequential ids; device N's worker listens on queue
``keys.queue_for(N)``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable

import redis

from .. import keys
from ..config import JobConfig
from ..errors import Conflict, NotFound

__all__ = ["ACTIVE", "TRANSITIONS", "JobStore"]

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
        pipe.execute()
        return job_id

    def get(self, job_id: str) -> dict:
        raw = self.r.hgetall(keys.job(job_id))
        if not raw:
            raise NotFound(f"job {job_id!r} does not exist")
        job = {k.decode(): v.decode() for k, v in raw.items()}
        for field in ("config", "plan", "train_config", "final", "recoveries", "history"):
            if job.get(field):
                job[field] = json.loads(job[field])
        for field in ("created_at", "updated_at"):
            job[field] = float(job[field])
        for field in ("step", "start_step"):  # steps trained: where the workers' state is, where a run began
            if job.get(field):
                job[field] = int(job[field])
        job["devices"] = self.job_devices(job_id)
        return job

    def list(self) -> list[dict]:
        ids = [i.decode() for i in self.r.zrange(keys.JOBS, 0, -1)]
        jobs = []
        for job_id in ids:
            try:
                jobs.append(self.get(job_id))
            except NotFound:  # deleted between the two reads
                continue
        return jobs

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job["status"] in ACTIVE:
            raise Conflict(f"job {job_id} is {job['status']}: stop it (POST /api/network/stop/{job_id}) first")
        for device in job["devices"]:
            self.r.delete(keys.device(device["device_id"]))
            self.r.srem(keys.DEVICES, device["device_id"])
        # Its devices set and every run's keys are under the job's key.
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
                        raise Conflict(_conflict_message(job_id, current, to))
                    run_id = (pipe.hget(key, "run_id") or b"").decode()
                    for name, value in (expect or {}).items():
                        actual = (pipe.hget(key, name) or b"").decode()
                        if actual != value:
                            raise Conflict(f"job {job_id} has moved on: {name} is {actual!r}, not {value!r}")
                    mapping = {"status": to, "updated_at": _now()}
                    mapping.update({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()})
                    pipe.multi()
                    pipe.hset(key, mapping=mapping)
                    pipe.execute()
                    return {"from": current, "to": to, "run_id": run_id}
                except redis.WatchError:
                    continue

    def set_fields(self, job_id: str, **fields: object) -> None:
        mapping = {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}
        self.r.hset(keys.job(job_id), mapping=mapping)

    # --------------------------------------------------------------- devices
    def register_device(self, job_id: str, info: dict) -> int:
        job = self.get(job_id)
        if job["status"] in ("initializing", "training"):
            raise Conflict(f"job {job_id} is {job['status']}: register devices before initializing it")
        name = info.get("name")
        if name and any(d.get("name") == name for d in job["devices"]):
            raise Conflict(f"a device named {name!r} is already registered for job {job_id}")
        if job["status"] != "recovering":  # a recovering job takes the newcomer into its next plan
            self._forget_plan(job)
        device_id = int(self.r.incr(keys.DEVICE_SEQ))
        record = {"device_id": device_id, "job_id": job_id, "queue": keys.queue_for(device_id),
                  "registered_at": _now(), **info}  # fmt: skip
        pipe = self.r.pipeline()
        pipe.set(keys.device(device_id), json.dumps(record))
        pipe.sadd(keys.DEVICES, device_id)
        pipe.sadd(keys.job_devices(job_id), device_id)
        pipe.execute()
        return device_id

    def get_device(self, device_id: int) -> dict:
        raw = self.r.get(keys.device(device_id))
        if raw is None:
            raise NotFound(f"device {device_id} does not exist")
        return json.loads(raw)

    def devices(self) -> list[dict]:
        ids = sorted(int(i) for i in self.r.smembers(keys.DEVICES))
        raws = self.r.mget([keys.device(i) for i in ids]) if ids else []
        return [json.loads(r) for r in raws if r is not None]

    def job_devices(self, job_id: str) -> list[dict]:
        ids = sorted(int(i) for i in self.r.smembers(keys.job_devices(job_id)))
        raws = self.r.mget([keys.device(i) for i in ids]) if ids else []
        return [json.loads(r) for r in raws if r is not None]

    def update_device(self, device_id: int, **fields: object) -> None:
        record = self.get_device(device_id)
        record.update(fields)
        self.r.set(keys.device(device_id), json.dumps(record))

    def delete_device(self, device_id: int) -> None:
        record = self.get_device(device_id)
        job_id = record["job_id"]
        try:
            status = self.get(job_id)["status"]
        except NotFound:
            status = None
        if status in ACTIVE:
            raise Conflict(f"device {device_id} belongs to job {job_id}, which is {status}: stop the job first")
        if status is not None:
            self._forget_plan(self.get(job_id))
        pipe = self.r.pipeline()
        pipe.delete(keys.device(device_id))
        pipe.srem(keys.DEVICES, device_id)
        pipe.srem(keys.job_devices(job_id), device_id)
        pipe.execute()

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


def _sources(to: str) -> tuple[str, ...]:
    return tuple(s for s, targets in TRANSITIONS.items() if to in targets)


def _conflict_message(job_id: str, current: str, to: str) -> str:
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
