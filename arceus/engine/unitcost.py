"""What each partition unit of a model costs to train, measured: the plan's cost model.

A plan divides each stage's cost by its device's matmul speed (``plan.partition``). Counted in
FLOPs, a layer that runs far below matmul speed looks cheap: the CNN's first convolution (one
input channel, memory-bound) measured 30x slower than its FLOPs predict (docs/benchmarks.md).
``measure`` times each unit's forward and backward here, on the CPU with one thread, and turns
the time into the FLOPs a matmul would do in it on this CPU: what the unit costs in the units
the devices' speeds are measured in. A unit is built, timed and dropped one at a time, so this
never holds more than the largest unit.
"""

from __future__ import annotations

import time

import torch

from ..config import JobConfig
from ..plan.partition import units
from .device import matmul_gflops
from .model import Shard

__all__ = ["BUDGET_S", "measure"]

BUDGET_S = 5.0  # a model whose units take longer to time is planned by FLOPs
ROWS = 64  # samples a unit is timed with (or the batch, when smaller)
REPEATS = 3  # the fastest of these is kept: the others are other work taking the CPU


def measure(job: JobConfig, budget_s: float = BUDGET_S, seed: int = 0) -> list[float] | None:
    """Each unit's training cost per sample, in matmul FLOPs of this CPU; None when timing them
    all would take more than ``budget_s`` seconds."""
    layers = job.layers
    rows = min(job.dataset.batch_size, ROWS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        deadline = time.perf_counter() + budget_s
        seconds = []
        for start, end in units(layers):
            shard = Shard(layers, start, end, seed).train()
            x = _sample_batch(shard, rows, needs_grad=start > 0)
            seconds.append(_best_s(shard, x, deadline))
            if seconds[-1] is None:
                return None
        gflops = matmul_gflops(torch.device("cpu"), seconds=0.2)
    finally:
        torch.set_num_threads(before)
    return [s * gflops * 1e9 / rows for s in seconds]


def _sample_batch(shard: Shard, rows: int, needs_grad: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if shard.input.ids:  # token ids: any in range does
        return torch.randint(0, 256, (rows, *shard.input.shape), generator=g)
    return torch.randn((rows, *shard.input.shape), generator=g).requires_grad_(needs_grad)


def _best_s(shard: Shard, x: torch.Tensor, deadline: float) -> float | None:
    best = None
    for _ in range(REPEATS + 1):  # the first one warms up: allocations, kernels
        t0 = time.perf_counter()
        out = shard(x)
        out.backward(torch.ones_like(out))
        took = time.perf_counter() - t0
        shard.zero_grad(set_to_none=True)
        x.grad = None
        if time.perf_counter() > deadline:
            return None
        best = took if best is None else min(best, took)
    return best
