"""Thin lifecycle tasks: they translate arguments and delegate to arceus.host.ShardHost."""

from __future__ import annotations

import os
import threading

from arceus.host import ShardHost
from arceus.settings import Settings

from . import app
from .app import LOAD_SHARD, RUN_STAGE, UNLOAD_SHARD

_host: ShardHost | None = None
_lock = threading.Lock()


def host() -> ShardHost:
    """The worker's shard holder, created on first use (one per worker process)."""
    global _host
    with _lock:
        if _host is None:
            import torch  # noqa: PLC0415

            threads = os.environ.get("ARCEUS_THREADS")
            if threads:
                torch.set_num_threads(int(threads))
            settings = Settings.from_env()
            _host = ShardHost(settings, app.conf.broker_url, device=os.environ.get("ARCEUS_DEVICE"))
        return _host


@app.task(name=LOAD_SHARD)
def load_shard(job_id: str, device_id: int, shard: dict, model_config: dict, seed: int) -> dict:
    return host().load(job_id, device_id, shard, model_config, seed)


@app.task(name=RUN_STAGE)
def run_stage(spec: dict, stage: int) -> dict:
    return host().run(spec, stage)


@app.task(name=UNLOAD_SHARD)
def unload_shard(job_id: str) -> bool:
    return host().unload(job_id)
