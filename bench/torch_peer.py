"""PyTorch's own pipelining (torch.distributed.pipelining, gloo, one process per stage) on
the same layers, batch, micro-batches and learning rate: the peer Arceus is measured against.

Written fresh for this benchmark; each rank builds its layers with arceus.engine.model.Shard (the
same init), gets the same partition, and trains ``steps`` mini-batches after ``warmup``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from arceus.config import JobConfig, ModelConfig
from arceus.engine.model import Shard
from arceus.launch.procs import free_port
from arceus.plan.partition import plan

__all__ = ["TorchRefused", "torch_pipeline_samples_per_s"]


class TorchRefused(Exception):
    """A configuration torch.distributed.pipelining does not run."""


def _rank(rank: int, world: int, port: int, cfg: dict, out: mp.Queue | None, addr: str = "127.0.0.1") -> None:
    torch.set_num_threads(cfg["threads"])
    os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _train(rank, world, cfg, out)
    except Exception as e:
        if out is not None:  # the parent stops waiting at once instead of at its timeout
            out.put(f"rank {rank}: {type(e).__name__}: {e}")
        raise
    finally:
        dist.destroy_process_group()


def _train(rank: int, world: int, cfg: dict, out: mp.Queue | None) -> None:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe  # noqa: PLC0415

    job = JobConfig(ModelConfig(layer_sizes=tuple(cfg["sizes"])))
    mine = plan(job.layers, world)[rank]
    shard = Shard(job.layers, mine.start_layer, mine.end_layer, seed=0)
    stage = PipelineStage(shard, rank, world, torch.device("cpu"))
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg["schedule"]]
    schedule = cls(stage, n_microbatches=cfg["micro_batches"], loss_fn=F.cross_entropy)
    opt = torch.optim.SGD(shard.parameters(), lr=cfg["lr"])
    g = torch.Generator().manual_seed(0)
    batch, features = cfg["batch"], cfg["sizes"][0]
    x = torch.randn(batch, features, generator=g)
    y = torch.randint(0, cfg["sizes"][-1], (batch,), generator=g)

    def train_step() -> None:
        opt.zero_grad()
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=y)
        else:
            schedule.step()
        opt.step()

    for _ in range(cfg["warmup"]):
        train_step()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(cfg["steps"]):
        train_step()
    dist.barrier()
    if rank == 0:
        rate = batch * cfg["steps"] / (time.perf_counter() - t0)
        if out is None:
            print(json.dumps({"samples_per_s": rate}), flush=True)
        else:
            out.put(rate)


def torch_pipeline_samples_per_s(
    sizes: list[int], stages: int, micro_batches: int, schedule: str, batch: int = 256, lr: float = 0.1,
    steps: int = 30, warmup: int = 5, threads: int | None = None,
) -> float:  # fmt: skip
    if schedule == "1f1b" and micro_batches < stages:
        raise TorchRefused(f"Schedule1F1B needs at least as many micro-batches as stages ({micro_batches} < {stages})")
    if batch % micro_batches:
        # It splits inputs and targets differently when uneven (86/86/84 vs 86/85/85) and fails.
        raise TorchRefused(f"a batch of {batch} does not split evenly into {micro_batches} micro-batches")
    cfg = {"sizes": sizes, "micro_batches": micro_batches, "schedule": schedule, "batch": batch, "lr": lr,
           "steps": steps, "warmup": warmup, "threads": threads or max(1, (os.cpu_count() or 1) // stages)}  # fmt: skip
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, stages, port, cfg, out), daemon=True) for r in range(stages)]
    for p in procs:
        p.start()
    try:
        got = out.get(timeout=600)
        if isinstance(got, str):
            raise RuntimeError(f"torch pipelining failed: {got}")
        return got
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.terminate()


if __name__ == "__main__":
    # One rank as its own process (bench/lan.py starts ranks inside network namespaces):
    # python -m bench.torch_peer RANK WORLD MASTER_ADDR PORT CONFIG_JSON
    _rank(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4]), json.loads(sys.argv[5]), None, addr=sys.argv[3])
