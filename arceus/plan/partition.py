"""Split a model's layers over D devices as contiguous half-open ranges (plain data, no torch).

Layers without parameters stay with the layer before them (``units``). The units are split
into D contiguous ranges that minimise the slowest stage's training FLOPs (``plan``), among
the splits whose estimated memory fits each device that reported its memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ..errors import PartitionError
from .layers import Layer, saved_values, train_flops_per_sample

__all__ = ["StageAssignment", "assign", "balanced_ranges", "memory_bytes", "partition", "plan", "units"]


@dataclass(frozen=True)
class StageAssignment:
    stage: int
    start_layer: int  # inclusive
    end_layer: int  # exclusive
    device_id: str | None = None
    # Estimates for the range: parameters, training FLOPs per sample, memory (memory_bytes()).
    params: int = 0
    flops: int = 0
    memory_bytes: int = 0

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageAssignment:
        extra = {k: int(d[k]) for k in ("params", "flops", "memory_bytes") if k in d}
        return cls(int(d["stage"]), int(d["start_layer"]), int(d["end_layer"]), d.get("device_id"), **extra)


def partition(num_units: int, num_devices: int) -> list[tuple[int, int]]:
    """Return ``num_devices`` ranges ``(start, end)`` covering ``range(num_units)``.

    Every stage gets ``L // D`` units and the first ``L % D`` stages one more, as the
    original Arceus did (earlier stages hold the input layer, usually the widest).
    """
    if num_units < 1:
        raise PartitionError(f"cannot partition a model with {num_units} layers (L must be >= 1)")
    if not 1 <= num_devices <= num_units:
        raise PartitionError(
            f"cannot split L={num_units} layers over D={num_devices} devices: need 1 <= D <= L (every device "
            f"must hold at least one layer; L counts the layers with parameters, the others go with them): "
            f"use between 1 and {num_units} devices"
        )
    base, extra = divmod(num_units, num_devices)
    ranges, start = [], 0
    for d in range(num_devices):
        end = start + base + (1 if d < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def units(layers: Sequence[Layer]) -> list[tuple[int, int]]:
    """Layer ranges that are never split: a layer with parameters and the parameterless layers
    after it (activations, pooling, flatten, dropout); those before the first join it."""
    starts = [layer.index for layer in layers if layer.params > 0][1:]
    bounds = [0, *starts, len(layers)]
    return [(a, b) for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def memory_bytes(layers: Sequence[Layer], start: int, end: int, rows: int, optimizer_states: int = 2) -> int:
    """What layers ``[start, end)`` need, about: fp32 weights, gradients and ``optimizer_states``
    tensors like them (AdamW keeps 2, SGD with momentum 1), and the activations autograd keeps for
    ``rows`` samples in flight (``saved_values``; a pipeline keeps up to a whole batch)."""
    params = sum(layer.params for layer in layers[start:end])
    saved = sum(saved_values(layer) for layer in layers[start:end])
    return 4 * params * (2 + optimizer_states) + 4 * rows * saved


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def balanced_ranges(
    costs: Sequence[int], num_stages: int, fits: Callable[[int, int, int], bool] | None = None
) -> list[tuple[int, int]] | None:
    """Split ``costs`` (one per unit, in order) into ``num_stages`` contiguous non-empty ranges that
    minimise the largest range's sum, and among those the sum of squares, so the stages that are
    not the bottleneck are balanced too: two exact dynamic programs. ``fits(stage, start, end)``
    may forbid a range. Remaining ties give the earlier stages more. None when no split fits."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def solve(score: Callable[[float, int], float], cap: float) -> tuple[float, list[tuple[int, int]]] | None:
        """The split minimising score(accumulated, range cost) summed up the ranges, each range <= cap."""
        inf = float("inf")
        best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
        start = [[0] * (n + 1) for _ in range(num_stages + 1)]
        best[0][0] = 0
        for d in range(1, num_stages + 1):
            for u in range(d, n - (num_stages - d) + 1):
                for k in range(d - 1, u):
                    cost = prefix[u] - prefix[k]
                    if best[d - 1][k] == inf or cost > cap or (fits is not None and not fits(d - 1, k, u)):
                        continue
                    value = score(best[d - 1][k], cost)
                    if value < best[d][u] or (value == best[d][u] and k > start[d][u]):
                        best[d][u], start[d][u] = value, k
        if best[num_stages][n] == inf:
            return None
        ranges, u = [], n
        for d in range(num_stages, 0, -1):
            ranges.append((start[d][u], u))
            u = start[d][u]
        return best[num_stages][n], ranges[::-1]

    first = solve(max, float("inf"))  # the least largest range
    if first is None:
        return None
    second = solve(lambda acc, cost: acc + cost * cost, first[0])  # balance the rest under it
    return second[1] if second is not None else first[1]


def plan(
    layers: Sequence[Layer], device_ids: list[str] | int, capacities: Sequence[int | None] = (), rows: int = 1
) -> list[StageAssignment]:
    """The pipeline plan: stage i holds layers ``[start, end)`` on ``device_ids[i]``, the split that
    minimises the slowest stage's training FLOPs among those whose ``memory_bytes`` (``rows``
    samples in flight) fit each device's capacity in bytes (None: not reported)."""
    ids: list = list(range(device_ids)) if isinstance(device_ids, int) else list(device_ids)
    groups = units(layers)
    partition(len(groups), len(ids))  # refuses D > L, naming both
    costs = [train_flops_per_sample(layers, a, b) for a, b in groups]
    # Units' memory as prefix sums: the programs ask for every range, often.
    unit_bytes = [memory_bytes(layers, a, b, rows) for a, b in groups]
    mem = [0]
    for m in unit_bytes:
        mem.append(mem[-1] + m)

    def need(k: int, u: int) -> int:
        return mem[u] - mem[k]

    def fits(stage: int, k: int, u: int) -> bool:
        cap = capacities[stage] if stage < len(capacities) else None
        return cap is None or need(k, u) <= cap

    ranges = balanced_ranges(costs, len(ids), fits)
    if ranges is None:  # say which device falls short in the best split without the memory check
        for stage, (k, u) in enumerate(balanced_ranges(costs, len(ids)) or []):
            if not fits(stage, k, u):
                a, b = groups[k][0], groups[u - 1][1]
                raise PartitionError(
                    f"device {ids[stage]} reported {_size(capacities[stage])}, but stage {stage} (layers [{a}, {b})) "
                    f"needs about {_size(need(k, u))} ({need(k, u):,} bytes: weights, gradients, optimizer state and "
                    f"a batch of activations) and no other split fits: register a device with more memory, more "
                    f"devices, or use smaller batches"
                )
    return assign(layers, ranges, ids, rows)


def assign(
    layers: Sequence[Layer], unit_ranges: Sequence[tuple[int, int]], device_ids: Sequence[str | None], rows: int = 1
) -> list[StageAssignment]:
    """Stage assignments for ranges of ``units(layers)``, one per device, with their estimates.
    ``plan`` chooses the ranges by cost; the benchmarks also assign ``partition``'s equal counts."""
    groups = units(layers)
    out = []
    for i, ((k, u), dev) in enumerate(zip(unit_ranges, device_ids, strict=True)):
        a, b = groups[k][0], groups[u - 1][1]
        params = sum(layer.params for layer in layers[a:b])
        flops = train_flops_per_sample(layers, a, b)
        out.append(StageAssignment(i, a, b, dev, params, flops, memory_bytes(layers, a, b, rows)))
    return out
