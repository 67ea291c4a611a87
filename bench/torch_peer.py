"""PyTorch's own pipelining (torch.distributed.pipelining, gloo, one process per stage) on
the same layers, split, batch, micro-batches and optimizer: the peer Arceus is measured against.

Written fresh for this benchmark; each rank builds its layers with arceus.engine.model.Shard (the
same init) for the stage assignment it is given, and trains ``steps`` batches of random inputs of
the dataset's shape (token ids for text) after ``warmup``; throughput does not depend on the values.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Sequence

import torch
import torch.distributed as dist

from arceus.config import JobConfig, TrainConfig
from arceus.engine.metrics import loss_sum_of
from arceus.engine.model import Shard
from arceus.engine.optim import make_optimizer
from arceus.launch.procs import free_port
from arceus.plan.partition import StageAssignment

__all__ = ["TorchRefused", "peer_config", "torch_pipeline_samples_per_s"]


class TorchRefused(Exception):
    """A configuration torch.distributed.pipelining does not run."""


def peer_config(
    job: JobConfig, stages: Sequence[StageAssignment], train: TrainConfig, schedule: str, micro_batches: int,
    steps: int, warmup: int, threads: int,
) -> dict:  # fmt: skip
    """What every rank is told (JSON-able: bench.lan passes it on a command line). Raises
    TorchRefused for what torch's schedules do not accept."""
    d, batch = len(stages), job.dataset.batch_size
    if schedule == "1f1b" and micro_batches < d:
        raise TorchRefused(f"Schedule1F1B needs at least as many micro-batches as stages ({micro_batches} < {d})")
    if batch % micro_batches:
        # It splits inputs and targets differently when uneven (86/86/84 vs 86/85/85) and fails.
        raise TorchRefused(f"a batch of {batch} does not split evenly into {micro_batches} micro-batches")
    return {"job": job.to_dict(), "ranges": [[s.start_layer, s.end_layer] for s in stages],
            "train": train.to_dict(), "schedule": schedule, "micro_batches": micro_batches,
            "steps": steps, "warmup": warmup, "threads": threads}  # fmt: skip


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

    job, train = JobConfig.parse(cfg["job"]), TrainConfig.parse(cfg["train"])
    start, end = cfg["ranges"][rank]
    shard = Shard(job.layers, start, end, seed=train.seed)
    stage = PipelineStage(shard, rank, world, torch.device("cpu"))
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[cfg["schedule"]]
    schedule = cls(stage, n_microbatches=cfg["micro_batches"], loss_fn=lambda out, y: loss_sum_of(out, y) / y.numel())
    opt = make_optimizer(shard.parameters(), train)
    g = torch.Generator().manual_seed(0)
    batch, sample = job.dataset.batch_size, job.dataset.sample
    targets = job.dataset.targets
    if sample.ids:
        x = torch.randint(0, 256, (batch, *sample.shape), generator=g)
    else:
        x = torch.randn(batch, *sample.shape, generator=g)
    y = torch.randint(0, targets[-1], (batch, *targets[:-1]), generator=g)

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
    job: JobConfig, stages: Sequence[StageAssignment], train: TrainConfig, schedule: str, micro_batches: int,
    steps: int = 30, warmup: int = 5, threads: int | None = None,
) -> float:  # fmt: skip
    """Samples/s of torch's pipelining on loopback, one process per stage assignment."""
    world = len(stages)
    threads = threads or max(1, (os.cpu_count() or 1) // world)
    cfg = peer_config(job, stages, train, schedule, micro_batches, steps, warmup, threads)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, world, port, cfg, out), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = out.get(timeout=1800)
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
