"""What follows every training run on the API's side: its checkpoints and its end.

A run's stages report on the run's event stream. The supervisor, a thread of the API
process (``python -m api.server``), reads the streams of the jobs that are training, and of
runs it has not read to the end (after the API restarts, from their start: writing a
checkpoint part again is harmless). For each run it
- writes every stage's checkpoint part to the store and commits each checkpoint once all
  parts are in (``arceus.checkpoints.CheckpointCollector``);
- once every stage is done, marks the job completed with its final metrics, the step it
  reached and each stage's TFLOP/s, so a completed job's last checkpoint is on disk;
- when a stage stops beating, hands the job to its ``recoverer`` (the API's ``Control``):
  ``lose`` moves it to ``recovering``, and ``recover`` is called on every pass until the
  job trains again on the devices it has, or fails. A recovery runs on a thread of its own,
  one at a time for each job: loading its shards takes up to ``ARCEUS_INIT_TIMEOUT``, and
  the other jobs' runs are followed meanwhile.
A stage that fails marks the job failed itself (``control.host``), unless what failed was
Redis (``liveness.lost_redis``): then it counts itself lost and the run is recovered. A run
whose stages all vanished is failed by ``api.control.Control.reap``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import redis

from .. import keys
from ..checkpoints import CheckpointCollector, CheckpointStore
from ..config import JobConfig, TrainConfig
from ..errors import ArceusError, NotFound
from ..events import EVENTS_PER_READ, EventLog
from ..liveness import RunLiveness
from ..plan.layers import train_flops_per_sample
from ..plan.partition import StageAssignment
from ..plan.runspec import RunSpec
from .jobs import JobStore

__all__ = ["Recoverer", "Supervisor", "expire_run", "merge_history", "run_spec", "run_train_config"]

log = logging.getLogger(__name__)


def run_train_config(job: dict) -> TrainConfig:
    """What the job's current (or last) run trains: the job's training config, with the epochs it had
    left where a recovery resumed it (``run_epochs``). The job keeps the config it was asked for."""
    train = dict(job["train_config"])
    if job.get("run_epochs"):
        train["epochs"] = int(job["run_epochs"])
    return TrainConfig.parse(train)


def run_spec(job: dict) -> RunSpec:
    """The spec of the job's current (or last) run, from the job's record."""
    return RunSpec(
        job["job_id"],
        job["run_id"],
        JobConfig.parse(job["config"]),
        run_train_config(job),
        tuple(StageAssignment.from_dict(s) for s in job["plan"]),
        start_step=int(job.get("start_step") or 0),
    )


def merge_history(history: dict, epochs: list[dict], stages: list[dict]) -> dict:
    """A training's epoch and stage rows over its runs: a recovered run redoes epochs, and its
    rows replace those of the run it replaced."""
    by_epoch = {e["epoch"]: e for e in [*history.get("epochs", []), *epochs]}
    by_stage = {(s["epoch"], s["stage"]): s for s in [*history.get("stages", []), *stages]}
    return {"epochs": list(by_epoch.values()), "stages": list(by_stage.values())}  # in the order they came


def expire_run(r: redis.Redis, run: keys.RunKeys) -> None:
    """A finished run's keys: its streams and parts go now, the rest (events, liveness) after a day."""
    transient = (":fwd:", ":bwd:", ":ckpt:")
    for key in r.scan_iter(match=run.pattern, count=1000):
        if any(t in key.decode() for t in transient):
            r.delete(key)
        else:
            r.expire(key, keys.RESULTS_TTL_S)


class Recoverer(Protocol):
    def lose(self, job: dict, stage: int, step: int) -> None:
        """The run of ``job`` lost ``stage`` at about ``step``: move the job to recovering."""

    def recover(self, job: dict) -> None:
        """Wait for devices, or plan again, load the last checkpoint and train on (or fail)."""


class _Run:
    """One run being read: where in its event stream, what it reported."""

    def __init__(self, r: redis.Redis, store: CheckpointStore, job: dict) -> None:
        self.spec = run_spec(job)
        self.jobs = JobStore(r)
        self.collector = CheckpointCollector(r, store, self.spec)
        self.events = EventLog(r, self.spec.keys)
        self.liveness = RunLiveness(r, self.spec.keys)
        self.cursor = b"0-0"
        # The job's step the run reached, about: its last stage's latest progress (every 0.5 s at most)
        # or a checkpoint a stage saved, whichever is further on.
        self.step = self.spec.start_step
        self.done: set[int] = set()
        self.epochs: list[dict] = []
        self.stage_rows: list[dict] = []

    def read(self) -> int:
        """Take every event written since the last read; returns how many there were. The
        latest epoch row and each stage's latest row go to the job's record (``/metrics``)."""
        n, latest = 0, {}
        for entry_id, ev in self.events.read(self.cursor):
            self.cursor, n = entry_id, n + 1
            reached = {"progress": "job_step", "checkpoint_part": "step"}.get(ev["type"])
            if reached is not None:  # before the part is handled: writing it may fail
                self.step = max(self.step, int(ev.get(reached, 0)))
            self.collector.handle(ev)
            if ev["type"] == "epoch":
                self.epochs.append(ev)
                latest["latest_epoch"] = ev
            elif ev["type"] == "stage":
                self.stage_rows.append(ev)
                latest["latest_stages"] = None  # made once, below
            elif ev["type"] == "stage_done":
                self.done.add(int(ev["stage"]))
        if "latest_stages" in latest:  # each stage's newest row
            latest["latest_stages"] = {str(s["stage"]): s for s in self.stage_rows}
        if latest:
            self.jobs.set_fields(self.spec.job_id, **latest)
        return n

    def lost_stage(self) -> int | None:
        """A stage that stopped beating: one its neighbours named, or one whose heartbeat
        expired after every stage had started (a lone stage has no neighbour to notice)."""
        lost = self.liveness.lost()
        if lost is not None or not self.liveness.started(self.spec.num_stages):
            return lost
        stages = [s.stage for s in self.spec.stages]
        for stage, beat in zip(stages, self.liveness.beats(stages), strict=True):
            if beat is None and stage not in self.done:
                return stage
        return None


class Supervisor:
    def __init__(
        self, r: redis.Redis, store: CheckpointStore, recoverer: Recoverer | None = None, interval_s: float = 0.25
    ) -> None:
        self.r, self.store, self.jobs, self.interval_s = r, store, JobStore(r), interval_s
        self.recoverer = recoverer
        self.runs: dict[str, _Run] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._indexed = False
        self._recoveries: dict[str, threading.Thread] = {}  # job id -> its recovery, while it runs

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._loop, name="arceus-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        deadline = time.monotonic() + 10  # for them all: a recovery's load may wait far longer
        for thread in list(self._recoveries.values()):
            thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except (redis.ConnectionError, redis.TimeoutError) as e:
                log.warning("supervisor: Redis is unreachable (%s); retrying", e)
                self._stop.wait(2.0)
            except Exception:  # a bug here must not end supervision of every other job
                log.exception("supervisor: unexpected error; retrying")
                self._stop.wait(2.0)
            self._stop.wait(self.interval_s)

    def poll(self) -> None:
        """One pass over the active jobs and those whose runs it follows: read every followed run's
        new events, finish the runs that ended, and hand lost devices and recovering jobs to the
        recoverer."""
        if not self._indexed:  # once: jobs that were active before that set was kept (an older Arceus's)
            self.jobs.index_active()
            self._indexed = True
        jobs = []
        active = {i.decode() for i in self.r.smembers(keys.ACTIVE_JOBS)}
        for job_id in sorted(active | {run.spec.job_id for run in self.runs.values()}):
            try:
                jobs.append(self.jobs.get(job_id))
            except NotFound:  # deleted: its run is expired below
                continue
        current = {job.get("run_id") for job in jobs}
        for run_id in [r for r in self.runs if r not in current]:  # superseded before it was seen to end
            expire_run(self.r, self.runs.pop(run_id).spec.keys)
        for job in jobs:
            try:
                self._supervise(job)
            except (redis.ConnectionError, redis.TimeoutError):
                raise
            except Exception:  # one job's trouble must not hold up the others'
                log.exception("supervisor: job %s", job.get("job_id"))

    def _supervise(self, job: dict) -> None:
        run = self._follow(job)
        if self.recoverer is None:
            return
        if job["status"] == "training" and run is not None and run.spec.run_id in self.runs:
            lost = run.lost_stage()
            if lost is not None:
                self.recoverer.lose(job, lost, run.step)
        elif job["status"] == "recovering":
            self._recover(job)

    def _recover(self, job: dict) -> None:
        """Start the job's recovery on a thread of its own, unless one is still running."""
        job_id = job["job_id"]
        running = self._recoveries.get(job_id)
        if running is not None and running.is_alive():
            return
        thread = threading.Thread(target=self._recovery, args=(job,), name=f"arceus-recover-{job_id}", daemon=True)
        self._recoveries[job_id] = thread
        thread.start()

    def _recovery(self, job: dict) -> None:
        job_id = job["job_id"]
        try:
            # The pass read ``job`` before this job's previous recovery (if any) ended: that one may
            # have moved it on since. Recover only the job as it is now, still recovering that run.
            now = self.jobs.get(job_id)
            if now["status"] == "recovering" and now.get("run_id") == job.get("run_id"):
                self.recoverer.recover(now)
        except NotFound:  # deleted meanwhile
            pass
        except (redis.ConnectionError, redis.TimeoutError) as e:
            log.warning("supervisor: Redis is unreachable while recovering job %s (%s); retrying", job_id, e)
        except Exception:  # logged like a pass's error; the next pass tries again
            log.exception("supervisor: recovering job %s", job_id)
        finally:
            if self._recoveries.get(job_id) is threading.current_thread():
                del self._recoveries[job_id]

    def _follow(self, job: dict) -> _Run | None:
        run_id = job.get("run_id")
        if not run_id or job.get("collected_run") == run_id:
            return None
        run = self.runs.get(run_id)
        if run is None:
            try:
                run = self.runs[run_id] = _Run(self.r, self.store, job)
            except (ArceusError, KeyError, ValueError) as e:
                log.error("job %s: run %s cannot be followed: %s", job["job_id"], run_id, e)
                self.jobs.set_fields(job["job_id"], collected_run=run_id)
                expire_run(self.r, keys.RunKeys(job["job_id"], run_id))
                return None
        try:
            while run.read() >= EVENTS_PER_READ:  # to the end: a run is finished only once read whole
                pass
        except (ArceusError, OSError) as e:  # a checkpoint part that cannot be written
            log.error("job %s: %s", job["job_id"], e)
        if len(run.done) == run.spec.num_stages:
            self._complete(run)
        elif job["status"] != "training":  # failed, stopped or recovering, and read to the end just now
            self._finish(run)
        return run

    def _complete(self, run: _Run) -> None:
        spec = run.spec
        samples = sum(e["samples"] for e in run.epochs)
        rows = []
        for shard in spec.stages:
            compute = sum(e["compute_s"] for e in run.stage_rows if e["stage"] == shard.stage)
            flops = train_flops_per_sample(spec.job.layers, shard.start_layer, shard.end_layer) * samples
            rows.append({"job_id": spec.job_id, "run_id": spec.run_id, "device_id": shard.device_id,
                         "stage": shard.stage, "layers": [shard.start_layer, shard.end_layer],
                         "flops": flops, "compute_seconds": compute,
                         "teraflops": flops / compute / 1e12 if compute > 0 else 0.0})  # fmt: skip
        step = run.collector.committed[-1] if run.collector.committed else spec.start_step
        try:
            self.jobs.transition(spec.job_id, "completed", allowed_from=("training",), expect={"run_id": spec.run_id},
                                 final=run.epochs[-1] if run.epochs else {}, step=step)  # fmt: skip
            self.jobs.add_teraflops(rows)
        except ArceusError as e:  # stopped or superseded meanwhile: nothing to complete
            log.info("job %s: run %s ended but is not the job's to complete: %s", spec.job_id, spec.run_id, e)
        self._finish(run)

    def _finish(self, run: _Run) -> None:
        """The run is over and read: keep its figures with the job, let its keys go."""
        self.runs.pop(run.spec.run_id, None)
        spec = run.spec
        try:
            if not self.r.exists(keys.job(spec.job_id)):  # deleted meanwhile (HSET would bring it back)
                return
            job = self.jobs.get(spec.job_id)
            history = merge_history(job.get("history") or {}, run.epochs, run.stage_rows)
            self.jobs.set_fields(spec.job_id, collected_run=spec.run_id, history=history)
            expire_run(self.r, spec.keys)
        except (redis.RedisError, ArceusError) as e:
            log.warning("job %s: %s", spec.job_id, e)
