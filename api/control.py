"""The job lifecycle the REST views delegate to: initialize, train, stop, report.

It enqueues lifecycle tasks on each device's queue (ids and small JSON only, never
tensors) and keeps every bit of state in Redis through ``arceus.control.jobs.JobStore``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence

import redis
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout

from arceus import keys
from arceus.blobs import put_blob
from arceus.checkpoints import CheckpointStore
from arceus.codeid import different_code
from arceus.config import JobConfig, TrainConfig
from arceus.control.devices import LEASE_S
from arceus.control.jobs import TRANSITIONS, JobStore, conflict_message
from arceus.control.supervisor import merge_history, run_train_config
from arceus.errors import ArceusError, Conflict, NotFound, UpstreamError
from arceus.events import EventLog
from arceus.keys import UNLOAD_EXPIRES_S, RunKeys, queue_for
from arceus.liveness import HEARTBEAT_TTL_S, RunLiveness
from arceus.plan import wires
from arceus.plan.partition import StageAssignment, plan, units
from arceus.plan.runspec import RunSpec
from arceus.settings import Settings
from workers import LOAD_SHARD, MEASURE_UNITS, RUN_STAGE, UNLOAD_SHARD

__all__ = ["BROKER_WAIT_S", "Control"]

# The longest a request waits for a broker connection to send a task (Celery's own pool would
# block forever once its broker_pool_limit connections are out).
BROKER_WAIT_S = 5.0
_INITIALIZABLE = tuple(status for status, to in TRANSITIONS.items() if "initializing" in to)
# A worker times the job's units in at most unitcost.BUDGET_S (5 s); the rest is Celery's hand-offs.
UNIT_COSTS_WAIT_S = 30.0

log = logging.getLogger(__name__)


def _valid_costs(costs: object, n: int) -> bool:
    return (
        isinstance(costs, list) and len(costs) == n
        and all(isinstance(c, (int, float)) and not isinstance(c, bool) and 0 <= c < float("inf") for c in costs)
    )  # fmt: skip


def _kept_costs(job: dict, config: JobConfig) -> list[float] | None:
    """The unit costs the job's record keeps from an earlier initialize, if they fit its model."""
    kept = job.get("unit_costs")
    return list(kept) if kept and len(kept) == len(units(config.layers)) else None


def _capacity(device: dict) -> int | None:
    """Bytes the device can hold: the least of its memory (its GPU's for CUDA, else the machine's,
    which MPS shares) and what its worker found free as it started; None when it reported neither."""
    on_gpu = str(device.get("torch_device", "")).startswith("cuda")
    total = device.get("accelerator_memory_gb") if on_gpu else device.get("memory_gb")
    free = device.get("free_memory_gb")  # 0 is a measurement (nothing free), unlike a total of 0
    known = [gb for gb in (total or None, free) if gb is not None]
    return int(min(known) * 2**30) if known else None


def _with_links(shards: list[StageAssignment], confirmed: list[dict]) -> list[StageAssignment]:
    """The plan with each link's wire, from what the stages' workers measured as they loaded."""
    reports = {info.get("stage"): info.get("link") for info in confirmed}
    if len(shards) < 2 or any(not isinstance(reports.get(s.stage), dict) for s in shards):
        return shards  # nothing measured: "auto" falls back to wires.FALLBACK
    try:
        return wires.choose(shards, [reports[s.stage] for s in shards])
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:
        log.warning("the workers' link reports do not add up (%s: %s): auto falls back to %s",
                    type(e).__name__, e, wires.FALLBACK)  # fmt: skip
        return shards


def _same_code(devices: list[dict]) -> list[dict]:
    """``devices``, once each one's worker is known to run the API's code (else a 409 naming it)."""
    for d in devices:
        why = different_code(d)
        if why is not None:
            raise Conflict(why)
    return devices


def _no_worker(device: dict) -> str:
    return (f"no worker has served it for {LEASE_S:.0f}s (start `arceus worker`, or "
            f"`celery -A workers worker -Q {device['queue']}` for a device registered by hand)")  # fmt: skip


class Control:
    def __init__(self, r: redis.Redis, celery: Celery, settings: Settings) -> None:
        self.r, self.celery, self.store = r, celery, JobStore(r)
        self.checkpoints = CheckpointStore(settings.checkpoint_dir)
        self.init_timeout_s = settings.init_timeout_s
        self.recover_wait_s = settings.recover_wait_s
        # How long a run's stages may take to start (their start barrier waits as long).
        self.start_grace_s = settings.recv_timeout_s + 10
        # What a stage may decode: a run whose messages would exceed it is refused here.
        self.max_payload_elements = settings.max_payload_elements

    def job(self, job_id: str) -> dict:
        """The job, after failing it if every process that could move it on is gone."""
        return self.reap(self.store.get(job_id))

    def reap(self, job: dict) -> dict:
        age = time.time() - float(job.get("updated_at") or 0)
        reason = None
        if job["status"] == "initializing" and age > self.init_timeout_s + 30:
            reason = "initialization never finished (the API process handling it stopped?): initialize again"
        elif job["status"] == "training" and time.time() - float(job.get("started_at") or 0) > self.start_grace_s:
            liveness = RunLiveness(self.r, RunKeys(job["job_id"], job["run_id"]))
            beats = liveness.beats([s["stage"] for s in job.get("plan") or []])
            # Live stages watch each other; with none alive and one silent, nobody else will notice. Once
            # every stage has started, the supervisor recovers a run whose stages went silent (Redis
            # restarted under them, say), unless it could not follow the run: failing it here would race that.
            followed = job.get("collected_run") != job["run_id"]
            if beats and b"alive" not in beats and None in beats and not (followed and liveness.started(len(beats))):
                reason = (
                    f"no stage of run {job['run_id']} is running (no heartbeat): "
                    f"are the workers of devices {[s['device_id'] for s in job['plan']]} up?"
                )
        if reason is not None:
            try:
                self.store.transition(job["job_id"], "failed", allowed_from=(job["status"],), error=reason)
            except ArceusError:  # it moved on meanwhile
                pass
            job = self.store.get(job["job_id"])
        return job

    def initialize(
        self, job_id: str, seed: int = 0, checkpoint: int | str | None = None, devices: list[str] | None = None
    ) -> dict:
        """Partition the layers over devices (``devices``, else ``choose_devices``'s); each device's
        worker builds its shard (weights from ``seed``, per layer) and keeps it in memory. Returns
        once all confirmed. With ``checkpoint`` ("latest" or a step), the shards are that
        checkpoint's weights and optimizer state, split for these devices, and training continues
        from its step."""
        job = self.job(job_id)
        manifest = self.checkpoints.manifest(job_id, checkpoint) if checkpoint is not None else None
        config = JobConfig.parse(job["config"])
        # Refused before a worker is asked to time anything (the transition below checks again).
        if job["status"] not in _INITIALIZABLE:
            raise Conflict(conflict_message(job_id, job["status"], "initializing"))
        # What the units cost depends on the model alone: timed before the lock, which guards
        # the devices' reservation and is held for milliseconds.
        costs, cost_fields = self._unit_costs(job, config, devices)
        with self.store.planning():
            chosen = self.choose_devices(job, config, devices)
            shards = self._plan(config, chosen, costs)
            self.store.transition(
                job_id, "initializing", error="", reserved=[s.device_id for s in shards], **cost_fields
            )
        step = manifest["step"] if manifest is not None else 0
        confirmed = self._load(job_id, shards, config, seed, manifest)
        shards = _with_links(shards, confirmed)
        # Loaded: the checkpoints past its step saved a future that is not this one's (an
        # initialization that fails keeps them, to be loaded again).
        self.checkpoints.drop_after(job_id, step)
        stages = [s.to_dict() for s in shards]
        self.store.transition(job_id, "ready", plan=stages, init_seed=seed, step=step, reserved=[])
        return {"plan": stages, "devices": confirmed, "step": step}

    def choose_devices(self, job: dict, config: JobConfig, asked: list[str] | None = None) -> list[dict]:
        """The devices a job's plan goes over: those ``asked`` for (each must exist, be live, be
        free and run the API's code); else the live ones registered for the job (each running the
        API's code); else every live device no other active job uses, of those that run the API's
        code. A default choice takes as many as the model has layers."""
        job_id, busy = job["job_id"], self.store.busy(except_job=job["job_id"])
        if asked:
            if len(set(asked)) != len(asked):
                raise Conflict(f"devices {asked} name a device twice")
            devices = self.store.devices.some(asked)
            missing = sorted(set(asked) - {d["device_id"] for d in devices})
            if missing:
                raise NotFound(f"devices {missing} do not exist (GET /api/devices lists them)")
            for d in devices:
                if not d["alive"]:
                    raise Conflict(f"device {d['device_id']} is not live: {_no_worker(d)}")
                if d["device_id"] in busy:
                    raise Conflict(f"device {d['device_id']} serves job {busy[d['device_id']]}, which is active")
            return _same_code(devices)
        own = self.store.registered_devices(job_id)
        if own:
            live = _same_code([d for d in own if d["alive"] and d["device_id"] not in busy])
            if not live:
                dead = [d for d in own if not d["alive"]]
                why = _no_worker(dead[0]) if dead else f"they serve jobs {sorted(set(busy.values()))}"
                raise Conflict(
                    f"none of the devices registered for job {job_id} ({[d['device_id'] for d in own]}) can take it: "
                    f"{why}"
                )
        else:  # the pool: a device whose worker runs other code is left out (one registered for the job is not)
            free = [d for d in self.store.devices.live() if d["device_id"] not in busy]
            live = [d for d in free if different_code(d) is None]
            if free and not live:
                raise Conflict(different_code(free[0]))
            if not live:
                raise Conflict(
                    f"job {job_id} has no devices: no live device is free. Start `arceus worker` on a machine (or "
                    "register one with POST /api/devices/register and run the worker command it answers)"
                )
        return live[: len(units(config.layers))]

    def _check_devices(self, job: dict, shards: tuple[StageAssignment, ...]) -> None:
        """Before a run: every device of the plan is live and serves no other active job."""
        busy = self.store.busy(except_job=job["job_id"])
        found = {d["device_id"]: d for d in self.store.devices.some([s.device_id for s in shards])}
        for shard in shards:
            device = found.get(shard.device_id)
            if device is None:
                raise Conflict(f"device {shard.device_id} of the plan was deleted: initialize the job again")
            if not device["alive"]:
                raise Conflict(f"device {shard.device_id} (stage {shard.stage}) is not live: {_no_worker(device)}")
            if shard.device_id in busy:
                raise Conflict(f"device {shard.device_id} (stage {shard.stage}) serves job {busy[shard.device_id]} now")

    def _plan(self, config: JobConfig, devices: list[dict], unit_costs: list[float] | None) -> list[StageAssignment]:
        # PartitionError (409) when D > L, or when no split fits the memory the devices reported.
        # With every device's measured speed, the split and the devices' order minimise the slowest stage's
        # time; each unit's cost is what a worker measured (None: its FLOPs).
        return plan(config.layers, [d["device_id"] for d in devices], [_capacity(d) for d in devices],
                    rows=config.dataset.batch_size, gflops=[d.get("gflops") for d in devices],
                    unit_costs=unit_costs)  # fmt: skip

    def _unit_costs(
        self, job: dict, config: JobConfig, asked: list[str] | None
    ) -> tuple[list[float] | None, dict[str, object]]:
        """What each unit of the job's model costs (``engine.unitcost``: forward and backward on
        one CPU thread, as matmul FLOPs of that CPU), timed by the worker of the device that would
        hold its first stage, and the job record's fields that keep them. Kept costs are reused.
        None, and the plan counts FLOPs, where the worker could not time them; ``cost_model`` says
        which it was, and why. A plan that cannot be (more devices than units, too little memory)
        fails here, before any worker builds a layer."""
        kept = _kept_costs(job, config)
        if kept is not None:
            return kept, {}
        device_id = self._plan(config, self.choose_devices(job, config, asked), None)[0].device_id
        n, result = len(units(config.layers)), None
        try:
            result = self._send(MEASURE_UNITS, [config.to_dict()], device_id, expires=UNIT_COSTS_WAIT_S)
            costs = result.get(timeout=UNIT_COSTS_WAIT_S, propagate=True)
            if costs is None:
                model = f"FLOPs: timing the units on device {device_id} would take too long or not fit its memory"
            elif not _valid_costs(costs, n):
                costs, model = None, f"FLOPs: device {device_id} answered {n} unit costs wrongly: is it up to date?"
            else:
                model = f"measured: each unit's time on device {device_id} (its CPU, one thread)"
        except Exception as e:  # a worker without this task, a timeout, a model it cannot build: FLOPs
            costs, model = None, f"FLOPs: device {device_id} could not time the units ({type(e).__name__}: {e})"
            log.warning("job %s: %s", job["job_id"], model)
        finally:
            if result is not None:
                result.forget()
        # An empty list is no costs: the next initialize tries again.
        return costs, {"unit_costs": costs or [], "cost_model": model}

    def _load(
        self,
        job_id: str,
        shards: list[StageAssignment],
        config: JobConfig,
        seed: int,
        manifest: dict | None,
        why: str = "",
        status: str = "initializing",
    ) -> list[dict]:
        """Every device's worker loads its shard (from ``seed``, or its slice of the checkpoint
        ``manifest``); returns their confirmations, or fails the job naming the device (after ``why``,
        a recovery's reason to load, in the job's error). ``status`` is the job's while it loads."""

        def fail(reason: str) -> str:
            # Only the job as this load found it: a job stopped, then initialized again meanwhile, is another
            # load's to fail, and a run that trains meanwhile is not a load's at all.
            self.store.transition(job_id, "failed", allowed_from=(status,),
                                  error=f"{why}, and {reason}" if why else reason)  # fmt: skip
            return reason

        pending = []
        try:
            data_urls = self._data_urls(shards)
            for shard in shards:
                if manifest is not None:  # the stage's slice, by Redis: tensors never go through Celery
                    data = self.checkpoints.slice(job_id, manifest["step"], shard.start_layer, shard.end_layer)
                    put_blob(self.r, keys.restore(job_id, shard.stage), data, int(self.init_timeout_s) + 60)
                # The devices' data Redis, for each stage to time the legs its streams will take.
                args = [job_id, shard.device_id, shard.to_dict(), config.to_dict(), seed, manifest is not None,
                        list(data_urls)]  # fmt: skip
                pending.append((shard, self._send(LOAD_SHARD, args, shard.device_id)))
        except (UpstreamError, redis.RedisError) as e:  # the broker refused: nothing will confirm
            raise UpstreamError(fail(f"could not enqueue the shards: {e}"), 503) from None
        deadline = time.monotonic() + self.init_timeout_s
        confirmed = []
        for shard, result in pending:
            try:
                confirmed.append(result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=True))
            except CeleryTimeout:
                reason = fail(
                    f"device {shard.device_id} did not confirm its shard within {self.init_timeout_s:.0f}s: "
                    f"is a worker running `celery -A workers worker -Q {queue_for(shard.device_id)}`?"
                )
                raise UpstreamError(reason, 504) from None
            except Exception as e:  # the task raised on the worker
                reason = fail(f"device {shard.device_id} failed to load its shard: {type(e).__name__}: {e}")
                if type(e).__name__ in ("DatasetUnavailable", "ConfigError"):  # what the job asks for is not there
                    raise Conflict(reason) from None
                raise UpstreamError(reason, 502) from None
            finally:
                result.forget()
        self.r.delete(*[keys.restore(job_id, s.stage) for s in shards])
        for info in confirmed:
            if "torch_device" not in info:  # skipped: the job moved on (stopped) while it loaded
                raise Conflict(f"job {job_id} moved on while its devices loaded their shards: {info}")
            self.store.devices.update(info["device_id"], torch_device=info["torch_device"])
        return confirmed

    # ------------------------------------------------------------- recovery
    def lose(self, job: dict, stage: int, step: int) -> None:
        """A stage of the job's run stopped beating: pause the job (``recovering``) and stop the
        run's other stages. The supervisor then calls ``recover`` until it trains again."""
        device = next(s["device_id"] for s in job["plan"] if s["stage"] == stage)
        liveness = RunLiveness(self.r, RunKeys(job["job_id"], job["run_id"]))
        cause = liveness.reason() or f"no heartbeat for {HEARTBEAT_TTL_S:.0f}s"  # a stage that lost Redis says so
        reason = (
            f"device {device} (stage {stage}) was lost ({cause}); waiting up to "
            f"{self.recover_wait_s:.0f}s for it to come back or another device to register"
        )
        try:
            self.store.transition(
                job["job_id"], "recovering", allowed_from=("training",), expect={"run_id": job["run_id"]},
                error=reason, lost_device=device, lost_stage=stage, lost_step=step, lost_cause=cause,
                recovering_since=self.store.devices.now(),
            )  # fmt: skip
        except ArceusError:  # stopped, failed or finished meanwhile
            return
        liveness.lose(stage, reason)
        log.warning("job %s: %s", job["job_id"], reason)

    def recover(self, job: dict) -> None:
        job_id, lost = job["job_id"], str(job["lost_device"])
        train = run_train_config(job)
        done = job.get("recoveries") or []
        why = f"device {lost} (stage {job['lost_stage']}) was lost ({job.get('lost_cause') or 'no cause recorded'})"
        if len(done) >= train.max_recoveries:
            self._fail_recovery(
                job_id,
                f"{why}, and the job has recovered {len(done)} of max_recoveries="
                f"{train.max_recoveries} times: initialize it again from its last checkpoint",
            )
            return
        since, now = float(job["recovering_since"]), self.store.devices.now()  # both by Redis's clock
        planned = {s["device_id"] for s in job["plan"]}
        try:
            with self.store.planning():
                devices = self._recovery_devices(job, since, now)
                back = any(d["device_id"] == lost for d in devices)
                newcomer = any(d["device_id"] not in planned for d in devices)
                if not (back or newcomer) and now - since < self.recover_wait_s:
                    return  # keep waiting
                if not devices:
                    other = list(filter(None, (different_code(d) for d in job["devices"] if d["alive"])))
                    raise Conflict(f"no worker of the job's devices answered within {self.recover_wait_s:.0f}s"
                                   + (f" that runs the API's code ({other[0]})" if other else ""))  # fmt: skip
                manifest, epochs = self._resume_point(job, train)
                config = JobConfig.parse(job["config"])
                shards = self._plan(config, devices[: len(units(config.layers))], _kept_costs(job, config))
                self.store.set_fields(job_id, reserved=[s.device_id for s in shards])  # ours while they load
        except ArceusError as e:
            self._fail_recovery(job_id, f"{why}, and {e}: initialize it again from its last checkpoint")
            return
        start = manifest["step"] if manifest is not None else 0
        if epochs <= 0:  # lost after its last checkpoint: nothing is left to train
            try:
                self.store.transition(job_id, "completed", allowed_from=("recovering",), error="",
                                      step=start, final=manifest["metrics"] if manifest else {})  # fmt: skip
            except ArceusError:
                pass
            return
        try:
            loaded = self._load(job_id, shards, config, int(job.get("init_seed") or 0), manifest, why, "recovering")
            shards = _with_links(shards, loaded)
        except ArceusError:  # the job is failed with the reason (or was stopped meanwhile)
            return
        resumed = TrainConfig.parse({**train.to_dict(), "epochs": epochs})
        spec = RunSpec(job_id, uuid.uuid4().hex[:12], config, resumed, tuple(shards), start_step=start,
                       data_urls=self._data_urls(shards))  # fmt: skip
        record = {"device_lost": lost, "stage_lost": int(job["lost_stage"]), "cause": job.get("lost_cause") or "",
                  "at_step": int(job["lost_step"]), "resumed_from_step": start,
                  "steps_redone": max(0, int(job["lost_step"]) - start),
                  "seconds": round(self.store.devices.now() - since, 2),
                  "devices": [s.device_id for s in shards]}  # fmt: skip
        try:
            self.store.transition(
                job_id, "training", allowed_from=("recovering",), expect={"run_id": job["run_id"]},
                run_id=spec.run_id, plan=[s.to_dict() for s in shards], run_epochs=epochs,
                start_step=start, step=start, started_at=time.time(), recoveries=[*done, record], error="",
                reserved=[],
            )  # fmt: skip
        except ArceusError:  # stopped meanwhile: stop wins
            return
        try:
            self._send_stages(spec)
        except UpstreamError as e:
            RunLiveness(self.r, spec.keys).abort(str(e))
            self._fail_recovery(job_id, f"{why}, and {e}", status="training", run_id=spec.run_id)
            return
        log.warning("job %s: recovered on devices %s from step %d", job_id, record["devices"], start)

    def _resume_point(self, job: dict, train: TrainConfig) -> tuple[dict | None, int]:
        """The checkpoint a recovery loads (None: the initial weights) and the epochs left to train."""
        start = int(job.get("start_step") or 0)
        steps = [s for s in self.checkpoints.steps(job["job_id"]) if s >= start]
        if not steps:
            if start:
                raise Conflict(f"no checkpoint of job {job['job_id']} at or after step {start} is left")
            return None, train.epochs  # lost before its first checkpoint: the run again, from the start
        manifest = self.checkpoints.manifest(job["job_id"], steps[-1])
        if manifest["step"] == start:  # saved by the run before this one: this run again, whole
            return manifest, train.epochs
        return manifest, manifest["end_epoch"] - manifest["epoch"]

    def _recovery_devices(self, job: dict, since: float, now: float) -> list[dict]:
        """What a recovery may plan over: the job's live devices (registered for it or in its plan),
        then live devices no other active job uses. The lost device counts only once it is heard
        from after the loss: a killed worker's lease outlives it by up to LEASE_S. (``since`` and
        ``now`` are Redis's clock, as the leases' ages are.)"""
        busy, lost = self.store.busy(except_job=job["job_id"]), str(job["lost_device"])

        def usable(d: dict) -> bool:
            if not d["alive"] or d["device_id"] in busy or different_code(d) is not None:
                return False
            return d["device_id"] != lost or now - d["last_seen_s"] > since

        own = [d for d in job["devices"] if usable(d)]
        known = {d["device_id"] for d in job["devices"]}
        return own + [d for d in self.store.devices.live() if usable(d) and d["device_id"] not in known]

    def _fail_recovery(self, job_id: str, reason: str, status: str = "recovering", run_id: str | None = None) -> None:
        """Fail the job from ``status`` (and its run ``run_id``, if given), unless it moved on."""
        expect = {"run_id": run_id} if run_id is not None else None
        try:
            self.store.transition(job_id, "failed", allowed_from=(status,), expect=expect, error=reason)
        except ArceusError:
            pass

    def train(self, job_id: str, train: TrainConfig) -> dict:
        job = self.job(job_id)
        if job["status"] not in ("ready", "completed"):
            # Let the store phrase the conflict (train before initialize, already training, ...).
            self.store.transition(job_id, "training")
        stages = tuple(StageAssignment.from_dict(s) for s in job.get("plan") or [])
        # From where the job's state is: its last run's end, or the checkpoint it was loaded from.
        start = int(job.get("step") or 0)
        spec = RunSpec(job_id, uuid.uuid4().hex[:12], JobConfig.parse(job["config"]), train, stages, start_step=start,
                       data_urls=self._data_urls(stages))  # fmt: skip
        spec.check_message_sizes(self.max_payload_elements)  # what every stage would refuse
        with self.store.planning():  # no other job takes these devices between the check and the switch
            self._check_devices(job, stages)
            moved = self.store.transition(
                job_id, "training", allowed_from=("ready", "completed"), expect={"run_id": job.get("run_id") or ""},
                run_id=spec.run_id, train_config=train.to_dict(), run_epochs=train.epochs, error="", final={},
                started_at=time.time(), start_step=start, recoveries=[], history={},
            )  # fmt: skip
        try:
            self._send_stages(spec)
        except UpstreamError as e:  # nothing will run: the job goes back to where it was
            RunLiveness(self.r, spec.keys).abort(str(e))  # a stage task that did get out skips itself
            try:
                self.store.transition(job_id, moved["from"], allowed_from=("training",), expect={"run_id": spec.run_id},
                                      run_id=job.get("run_id") or "", error=str(e))  # fmt: skip
            except ArceusError:
                pass
            raise
        return {"run_id": spec.run_id, "start_step": start}

    def _data_urls(self, stages: Sequence[StageAssignment]) -> tuple[str | None, ...]:
        """Per stage, its device's data Redis (the streams into it live there), or None: ours.
        The URLs hold passwords: they go to the stages in their tasks, never into an answer."""
        devices = {d["device_id"]: d for d in self.store.devices.some([s.device_id for s in stages])}
        return tuple(devices.get(s.device_id, {}).get("data_url") for s in stages)

    def _send_stages(self, spec: RunSpec) -> None:
        for shard in spec.stages:
            self._send(RUN_STAGE, [spec.to_dict(), shard.stage], shard.device_id)

    def _send(self, task: str, args: list, device_id: str, **options: object):
        """Enqueue ``task`` on the device's queue, waiting at most ``BROKER_WAIT_S`` for a broker
        connection (a request never blocks on a busy pool or a Redis that is down)."""
        try:
            with self.celery.producer_pool.acquire(block=True, timeout=BROKER_WAIT_S) as producer:
                return self.celery.send_task(task, args=args, queue=queue_for(device_id), producer=producer, **options)
        except Exception as e:  # a full pool, a refused connection, a timeout: the broker is not there for us
            raise UpstreamError(f"could not enqueue {task} for device {device_id}: {type(e).__name__}: {e}", 503) from e

    def stop(self, job_id: str) -> None:
        moved = self.store.transition(
            job_id, "stopped", allowed_from=("training", "recovering"), error="stopped by the user"
        )
        RunLiveness(self.r, RunKeys(job_id, moved["run_id"])).abort("stopped by the user")

    def delete(self, job_id: str) -> None:
        devices = self.store.get(job_id)["devices"]
        self.store.delete(job_id)
        self.checkpoints.delete(job_id)
        for d in devices:  # free the workers' memory; a worker that is gone has nothing to free
            try:
                self._send(UNLOAD_SHARD, [job_id], d["device_id"], expires=UNLOAD_EXPIRES_S)
            except UpstreamError as e:  # the job is gone either way; the worker frees it on restart
                log.warning("job %s deleted, but %s", job_id, e)

    def progress(self, job: dict) -> dict:
        """Latest epoch row and step of the job's current (or last) run."""
        if not job.get("run_id"):
            return {}
        events = EventLog(self.r, RunKeys(job["job_id"], job["run_id"]))
        latest = events.latest(("epoch", "progress"))
        out = {}
        epoch, step = latest.get("epoch"), latest.get("progress")
        if epoch is not None:
            out["latest_metrics"] = epoch
        if step is not None and (epoch is None or step["time"] > epoch["time"]):
            out["progress"] = {k: step[k] for k in ("epoch", "step", "steps", "loss", "accuracy")}
        elif epoch is not None:  # between epochs, or done: the last finished epoch
            out["progress"] = {"epoch": epoch["epoch"], "epochs": epoch["epochs"]}
        return out

    def metrics(self, job_id: str) -> dict:
        """The current training's epoch and stage rows: of its finished runs (kept with the job;
        a recovered run's rows replace those it redid) and of the run under way."""
        job = self.store.get(job_id)
        if not job.get("run_id"):
            return {"job_id": job_id, "run_id": None, "epochs": [], "stages": [], "recoveries": []}
        events = EventLog(self.r, RunKeys(job_id, job["run_id"])).all()
        live = ([e for e in events if e["type"] == "epoch"], [e for e in events if e["type"] == "stage"])
        rows = merge_history(job.get("history") or {}, *live)
        return {
            "job_id": job_id,
            "run_id": job["run_id"],
            "status": job["status"],
            **rows,
            "recoveries": job.get("recoveries") or [],
        }
