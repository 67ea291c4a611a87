"""What a device's worker holds between tasks: its shards, by job, and how it runs them.

The Celery tasks in ``workers/`` are thin wrappers around ``ShardHost``; everything a
stage run changes in a job's state (completed, failed with a reason, stopped) is done
here, against the job store in Redis.
"""

from __future__ import annotations

import logging
import socket

import redis

from .. import keys
from ..config import JobConfig
from ..engine.device import pick_device
from ..engine.model import Shard, build_shard
from ..engine.stage import StageRunner
from ..errors import ArceusError, Conflict, RunAborted
from ..events import EventLog
from ..liveness import RunLiveness
from ..plan.layers import train_flops_per_sample
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
        self.r = redis.Redis.from_url(redis_url)
        self.store = JobStore(self.r)

    def load(self, job_id: str, device_id: int, shard: dict, job_config: dict, seed: int) -> dict:
        if self.store.get(job_id)["status"] != "initializing":
            # A redelivered task of an initialization that is over must not replace a newer shard.
            return {"device_id": device_id, "skipped": "the job is not initializing"}
        plan = StageAssignment.from_dict(shard)
        job = JobConfig.parse(job_config)
        module = build_shard(job, plan.start_layer, plan.end_layer, seed).to(pick_device(self.settings.device))
        self.shards[job_id] = module
        params = sum(p.numel() for p in module.parameters())
        log.info("job %s: holding layers [%d, %d) (%d parameters)", job_id, plan.start_layer, plan.end_layer, params)
        return {"device_id": device_id, "stage": plan.stage, "start_layer": plan.start_layer,
                "end_layer": plan.end_layer, "parameters": params,
                "torch_device": str(next(module.parameters()).device)}  # fmt: skip

    def unload(self, job_id: str) -> bool:
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
            StageRunner(spec, stage, self.r, self.settings, model=model).run()
        except RunAborted as e:
            job = self.store.get(spec.job_id)
            if job.get("run_id") != spec.run_id or job["status"] == "stopped":
                return {"stage": stage, "stopped": True}
            self._fail(spec, str(e))
            raise
        except Exception as e:
            self._fail(spec, f"stage {stage}: {type(e).__name__}: {e}")
            raise
        if int(self.r.incr(spec.keys.finished)) == spec.num_stages:
            self._complete(spec)
        return {"stage": stage, "finished": True}

    def _fail(self, spec: RunSpec, reason: str) -> None:
        RunLiveness(self.r, spec.keys).abort(reason)  # the other stages stop now, not at a timeout
        try:
            self.store.transition(
                spec.job_id, "failed", allowed_from=("training",), expect={"run_id": spec.run_id}, error=reason
            )
        except ArceusError:  # already failed (first reason wins), stopped, or a newer run
            pass

    def _complete(self, spec: RunSpec) -> None:
        events = EventLog(self.r, spec.keys).all()
        epochs = [e for e in events if e["type"] == "epoch"]
        stages = [e for e in events if e["type"] == "stage"]
        rows = []
        for shard in spec.stages:
            mine = [e for e in stages if e["stage"] == shard.stage]
            compute = sum(e["compute_s"] for e in mine)
            samples = sum(e["samples"] for e in epochs)
            flops = train_flops_per_sample(spec.job.layers, shard.start_layer, shard.end_layer) * samples
            rows.append({"job_id": spec.job_id, "run_id": spec.run_id, "device_id": shard.device_id,
                         "stage": shard.stage, "layers": [shard.start_layer, shard.end_layer],
                         "flops": flops, "compute_seconds": compute,
                         "teraflops": flops / compute / 1e12 if compute > 0 else 0.0})  # fmt: skip
        self.store.add_teraflops(rows)
        final = epochs[-1] if epochs else {}
        try:
            self.store.transition(
                spec.job_id, "completed", allowed_from=("training",), expect={"run_id": spec.run_id}, final=final
            )
        except ArceusError as e:
            log.warning("job %s finished but could not be marked completed: %s", spec.job_id, e)
