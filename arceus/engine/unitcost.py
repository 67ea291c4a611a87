"""What each partition unit of a model costs to train, measured: the plan's cost model.

A plan divides each stage's cost by its device's matmul speed (``plan.partition``). Counted in
FLOPs, a layer that runs far below matmul speed looks cheap: the CNN's first convolution (one
input channel, memory-bound) measured 30x slower than its FLOPs predict (docs/benchmarks.md).
``measure`` times each unit's forward and backward here, on the CPU with one thread, and turns
the time into the FLOPs a matmul would do in it on this CPU: what the unit costs in the units
the devices' speeds are measured in. (A device's speed is measured with its own threads, or on
its GPU; a layer's cost relative to a matmul is taken to be the same there.) A unit is built,
timed and dropped one at a time, so this never holds more than the largest unit, and nothing
is built when the FLOPs say the timing would run over its budget.
"""

from __future__ import annotations

import time

import torch

from ..config import JobConfig
from ..plan.layers import Layer, train_flops_per_sample
from ..plan.partition import memory_bytes, units
from .device import free_memory_gb, matmul_gflops
from .model import Shard

__all__ = ["BUDGET_S", "measure"]

BUDGET_S = 5.0  # a model whose units take longer to time is planned by FLOPs
ROWS = 64  # samples a unit is timed with (or the batch, when smaller)
REPEATS = 3  # the fastest of these is kept: the others are other work taking the CPU


def measure(job: JobConfig, budget_s: float = BUDGET_S, seed: int = 0) -> list[float] | None:
    """Each unit's training cost per sample, in matmul FLOPs of this CPU. None, before anything is
    built, when timing them all would take more than ``budget_s`` seconds at matmul speed or the
    largest unit would take over half the memory this machine has free; None too when the timing
    itself runs over the budget."""
    layers = job.layers
    rows = min(job.dataset.batch_size, ROWS)
    groups = units(layers)
    before = torch.get_num_threads()
    # Process-wide: a worker runs one task at a time (worker_concurrency=1), so no stage runs beside it.
    torch.set_num_threads(1)
    try:
        gflops = matmul_gflops(torch.device("cpu"), seconds=0.2)
        flops = sum(train_flops_per_sample(layers, a, b) for a, b in groups) * rows * (REPEATS + 1)
        free = free_memory_gb(torch.device("cpu"))
        biggest = max(memory_bytes(layers, a, b, rows) for a, b in groups)
        if flops / (gflops * 1e9) > budget_s or (free is not None and biggest > free * 2**30 / 2):
            return None
        deadline = time.perf_counter() + budget_s
        seconds = []
        for start, end in groups:
            shard = Shard(layers, start, end, seed).train()
            took = _best_s(shard, _sample_batch(layers[start], rows, needs_grad=start > 0), deadline)
            if took is None:
                return None
            seconds.append(took)
    finally:
        torch.set_num_threads(before)
    return [s * gflops * 1e9 / rows for s in seconds]


def _sample_batch(first: Layer, rows: int, needs_grad: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if first.input.ids:  # token ids, within the embedding's table
        vocab = int(first.spec.get("num_embeddings", 256))
        return torch.randint(0, vocab, (rows, *first.input.shape), generator=g)
    return torch.randn((rows, *first.input.shape), generator=g).requires_grad_(needs_grad)


def _best_s(shard: Shard, x: torch.Tensor, deadline: float) -> float | None:
    """The fastest of ``REPEATS`` forward-and-backward passes, after one that warms up (allocations,
    kernels); None once past ``deadline``."""
    best = None
    for i in range(REPEATS + 1):
        t0 = time.perf_counter()
        out = shard(x)
        out.backward(torch.ones_like(out))
        took = time.perf_counter() - t0
        shard.zero_grad(set_to_none=True)
        x.grad = None
        if time.perf_counter() > deadline:
            return None
        if i > 0:
            best = took if best is None else min(best, took)
    return best
