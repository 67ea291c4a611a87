"""What a device's worker holds between tasks: its shards, by job, and how it runs them.

The Celery tasks in ``workers/`` are thin wrappers around ``ShardHost``. A stage that fails
marks its job failed here, with the reason; the API's supervisor (``control.supervisor``)
marks a run completed once every stage is done and its last checkpoint is on disk.
"""

from __future__ import annotations

import logging
import socket

from .. import keys
from ..config import JobConfig
from ..engine.device import pick_device
from ..engine.model import Shard, build_shard
from ..engine.probe import measure
from ..engine.source import training_data
from ..engine.stage import StageRunner
from ..engine.state import load_restore, optimizer_state
from ..engine.streams import run_client
from ..errors import ArceusError, Conflict, RunAborted
from ..liveness import RunLiveness, lost_redis
from ..plan.partition import StageAssignment
from ..plan.runspec import RunSpec
from ..settings import Settings
from .jobs import JobStore

__all__ = ["ShardHost"]

log = logging.getLogger(__name__)


class ShardHost:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.settings, self.redis_url = settings, redis_url
        self.shards: dict[str, Shard] = {}
        # Optimizer state by job, where its last run (or the checkpoint it was loaded from) left it.
        self.optimizers: dict[str, dict | None] = {}
        self.r = run_client(redis_url, settings.socket_timeout_s)
        self.store = JobStore(self.r)
        self.running: dict[int, RunSpec] = {}  # stage -> the run it is in, while a run_stage task runs

    def load(
        self,
        job_id: str,
        device_id: str,
        shard: dict,
        job_config: dict,
        seed: int,
        restore: bool = False,
        data_urls: list[str | None] = (),
    ) -> dict:
        if self.store.get(job_id)["status"] not in ("initializing", "recovering"):
            # A redelivered task of an initialization that is over must not replace a newer shard.
            return {"device_id": device_id, "skipped": "the job is not initializing"}
        plan = StageAssignment.from_dict(shard)
        job = JobConfig.parse(job_config)
        if plan.stage == 0:  # stage 0 reads the dataset: missing here is a 409 at initialize, not a failed run
            training_data(job.dataset, self.settings, job.dataset.sample)
        module = build_shard(job, plan.start_layer, plan.end_layer, seed)
        optimizer = None
        if restore:  # the API left this stage's slice of a checkpoint in Redis
            optimizer = load_restore(self.r, job_id, plan.stage, module)
        device = pick_device(self.settings.device)
        self.shards[job_id] = module.to(device)
        self.optimizers[job_id] = optimizer
        params = sum(p.numel() for p in module.parameters())
        log.info("job %s: holding layers [%d, %d) (%d parameters)", job_id, plan.start_layer, plan.end_layer, params)
        # What its links cost from here, for the API to pick each link's wire (plan.wires).
        link = measure(self.r, job_id, job, plan, device, data_urls, self.settings.socket_timeout_s)
        return {"device_id": device_id, "stage": plan.stage, "start_layer": plan.start_layer,
                "end_layer": plan.end_layer, "parameters": params, "torch_device": str(device),
                "link": link}  # fmt: skip

    def unload(self, job_id: str) -> bool:
        self.optimizers.pop(job_id, None)
        return self.shards.pop(job_id, None) is not None

    def run(self, spec_dict: dict, stage: int) -> dict:
        spec = RunSpec.from_dict(spec_dict)
        job = self.store.get(spec.job_id)
        if job.get("run_id") != spec.run_id or job["status"] != "training":
            return {"stage": stage, "skipped": f"run {spec.run_id} is not the job's active run"}
        # One execution per stage and run: a redelivered copy of this task (acks_late) is skipped.
        if not self.r.set(spec.keys.claimed(stage), socket.gethostname(), nx=True, ex=keys.RUN_TTL_S):
            return {"stage": stage, "skipped": f"stage {stage} of run {spec.run_id} already ran"}
        model = self.shards.get(spec.job_id)
        try:
            if model is None:
                raise Conflict(
                    f"this worker holds no shard of job {spec.job_id} (was it restarted?): initialize the job again"
                )
            runner = StageRunner(spec, stage, self.r, self.settings, model, self.optimizers.get(spec.job_id))
            self.running[stage] = spec
            try:
                runner.run()
            finally:
                self.running.pop(stage, None)
        except RunAborted as e:
            job = self.store.get(spec.job_id)
            if job.get("run_id") != spec.run_id or job["status"] != "training":
                return {"stage": stage, "stopped": str(e)}  # stopped, recovering, or a newer run
            if RunLiveness(self.r, spec.keys).lost() is not None:
                return {"stage": stage, "stopped": str(e)}  # a lost device: the API's supervisor recovers the run
            self._fail(spec, str(e))
            raise
        except Exception as e:
            reason = f"stage {stage}: {type(e).__name__}: {e}"
            if lost_redis(e):  # restarted, or its machine slept: the API recovers the run once it answers
                log.warning("job %s: %s: this stage stops; the API recovers the run", spec.job_id, reason)
                return {"stage": stage, "stopped": reason}
            self._fail(spec, reason)
            raise
        # The next run continues from here; the API's supervisor marks the job completed.
        self.optimizers[spec.job_id] = optimizer_state(model, runner.opt)
        return {"stage": stage, "finished": True}

    def give_up(self, reason: str) -> None:
        """This worker is shutting down: the stages it runs are lost to their runs (the API recovers
        them on other devices), so they stop within a heartbeat instead of holding the shutdown for
        the rest of the run."""
        for stage, spec in list(self.running.items()):
            RunLiveness(self.r, spec.keys).lose(stage, f"stage {stage}: {reason}")

    def _fail(self, spec: RunSpec, reason: str) -> None:
        RunLiveness(self.r, spec.keys).abort(reason)  # the other stages stop now, not at a timeout
        try:
            self.store.transition(
                spec.job_id, "failed", allowed_from=("training",), expect={"run_id": spec.run_id}, error=reason
            )
        except ArceusError:  # already failed (first reason wins), stopped, or a newer run
            pass
