"""Thin lifecycle tasks: they translate arguments and delegate to arceus.control.host.ShardHost."""

from __future__ import annotations

import threading

from celery import Celery, shared_task

from arceus.config import JobConfig
from arceus.control.host import ShardHost
from arceus.engine import unitcost
from arceus.settings import Settings

from .factory import LOAD_SHARD, MEASURE_UNITS, RUN_STAGE, UNLOAD_SHARD

_host: ShardHost | None = None
_lock = threading.Lock()


def host(app: Celery) -> ShardHost:
    """The worker's shard holder, created on first use (one per worker process)."""
    global _host
    with _lock:
        if _host is None:
            import torch  # noqa: PLC0415

            settings = Settings.from_env()  # this worker process's, as its app's (workers/celery.py)
            if settings.threads:
                torch.set_num_threads(settings.threads)
            _host = ShardHost(settings, app.conf.broker_url)
        return _host


@shared_task(name=LOAD_SHARD, bind=True)
def load_shard(
    self,
    job_id: str,
    device_id: str,
    shard: dict,
    job_config: dict,
    seed: int,
    restore: bool = False,
    data_urls: list[str | None] = (),
) -> dict:
    return host(self.app).load(job_id, device_id, shard, job_config, seed, restore, data_urls)


@shared_task(name=MEASURE_UNITS)
def measure_units(job_config: dict) -> list[float] | None:
    """Each partition unit's cost, timed on this machine (``engine.unitcost``), for the API's plan."""
    return unitcost.measure(JobConfig.parse(job_config))


@shared_task(name=RUN_STAGE, bind=True)
def run_stage(self, spec: dict, stage: int) -> dict:
    return host(self.app).run(spec, stage)


@shared_task(name=UNLOAD_SHARD, bind=True)
def unload_shard(self, job_id: str) -> bool:
    return host(self.app).unload(job_id)
