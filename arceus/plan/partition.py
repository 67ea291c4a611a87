"""Split a model's layers over D devices as contiguous half-open ranges (plain data, no torch).

Layers without parameters stay with the layer before them (``units``). The units are split
into D contiguous ranges that minimise the slowest stage's training FLOPs (``plan``), among
the splits whose estimated memory fits each device that reported its memory.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

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
    # Milliseconds of compute a batch, expected from its units' cost (measured, else FLOPs) and its device's speed.
    expected_ms: float | None = None
    # The link to the next stage, once both ends measured it (``plan.wires``): its wire and why.
    link: dict | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageAssignment:
        extra = {k: int(d[k]) for k in ("params", "flops", "memory_bytes") if k in d}
        link, expected = d.get("link"), d.get("expected_ms")
        return cls(int(d["stage"]), int(d["start_layer"]), int(d["end_layer"]), d.get("device_id"), **extra,
                   expected_ms=None if expected is None else float(expected),
                   link=dict(link) if isinstance(link, dict) else None)  # fmt: skip


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
    costs: Sequence[int],
    num_stages: int,
    fits: Callable[[int, int, int], bool] | None = None,
    speeds: Sequence[float] | None = None,
) -> list[tuple[int, int]] | None:
    """Split ``costs`` (one per unit, in order) into ``num_stages`` contiguous non-empty ranges that
    minimise the largest range's time (its sum over its stage's ``speeds``, 1 when not given), and
    among those the sum of squares, so the stages that are not the bottleneck are balanced too:
    two exact dynamic programs. ``fits(stage, start, end)`` may forbid a range. Remaining ties
    give the earlier stages more. None when no split fits."""
    n = len(costs)
    prefix = [0]
    for c in costs:
        prefix.append(prefix[-1] + c)
    speed = list(speeds) if speeds is not None else [1] * num_stages

    def solve(score: Callable[[float, int], float], cap: float) -> tuple[float, list[tuple[int, int]]] | None:
        """The split minimising score(accumulated, range cost) summed up the ranges, each range <= cap."""
        inf = float("inf")
        best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
        start = [[0] * (n + 1) for _ in range(num_stages + 1)]
        best[0][0] = 0
        for d in range(1, num_stages + 1):
            for u in range(d, n - (num_stages - d) + 1):
                for k in range(d - 1, u):
                    cost = (prefix[u] - prefix[k]) / speed[d - 1]
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
    layers: Sequence[Layer],
    device_ids: list[str] | int,
    capacities: Sequence[int | None] = (),
    rows: int = 1,
    gflops: Sequence[float | None] = (),
    unit_costs: Sequence[float] | None = None,
) -> list[StageAssignment]:
    """The pipeline plan: stage i holds layers ``[start, end)`` on device ``i`` of the order chosen.
    The split minimises the slowest stage's training cost among those whose ``memory_bytes``
    (``rows`` samples in flight) fit each device's capacity in bytes (None: not reported). A
    unit's cost is its FLOPs, or what ``unit_costs`` says (``engine.unitcost.measure``: its
    measured time as matmul FLOPs). When every device reported its speed (``gflops``), a stage's
    time is its cost over its device's speed, and the devices' order is chosen too (``_orders``):
    the slowest stage is the fastest it can be, and a slow device takes a light range. That plan
    replaces the speed-blind one when its slowest stage is expected ``SPEED_MARGIN`` faster."""
    ids: list = list(range(device_ids)) if isinstance(device_ids, int) else list(device_ids)
    groups = units(layers)
    partition(len(groups), len(ids))  # refuses D > L, naming both
    costs = _costs(layers, unit_costs)
    # Units' memory as prefix sums: the programs ask for every range, often.
    unit_bytes = [memory_bytes(layers, a, b, rows) for a, b in groups]
    mem = [0]
    for m in unit_bytes:
        mem.append(mem[-1] + m)
    caps = [capacities[i] if i < len(capacities) else None for i in range(len(ids))]
    speeds = list(gflops) if len(gflops) == len(ids) and all(g and g > 0 for g in gflops) else None

    def need(k: int, u: int) -> int:
        return mem[u] - mem[k]

    def fitting(order: Sequence[int]) -> Callable[[int, int, int], bool]:
        return lambda stage, k, u: caps[order[stage]] is None or need(k, u) <= caps[order[stage]]

    def score(order: Sequence[int], ranges: list[tuple[int, int]]) -> tuple[float, float]:
        stage_s = [sum(costs[k:u]) / (speeds[order[d]] if speeds else 1) for d, (k, u) in enumerate(ranges)]
        return max(stage_s), sum(t * t for t in stage_s)

    given = list(range(len(ids)))
    blind = balanced_ranges(costs, len(ids), fitting(given))  # the devices as given, blind to speed
    best = None if blind is None else (score(given, blind), given, blind)
    aware = None
    for order in _orders(speeds, caps, len(costs)) if speeds else []:
        found = balanced_ranges(costs, len(ids), fitting(order), [speeds[i] for i in order])
        if found is not None:
            scored = score(order, found)
            if aware is None or _better(scored, aware[0]):
                aware = (scored, order, found)
    # Speeds move work only where that is worth it: two like machines never measure the same,
    # and a plan that follows their noise would reorder them between initializations for nothing.
    if aware is not None and (best is None or aware[0][0] < SPEED_MARGIN * best[0][0]):
        best = aware
    if best is not None:
        order = best[1]
        speeds_in_order = [speeds[i] for i in order] if speeds else ()
        return assign(layers, best[2], [ids[i] for i in order], rows, speeds_in_order, costs)
    # Say which device falls short in the best split without the memory check.
    fits = fitting(given)
    for stage, (k, u) in enumerate(balanced_ranges(costs, len(ids)) or []):
        if not fits(stage, k, u):
            a, b = groups[k][0], groups[u - 1][1]
            raise PartitionError(
                f"device {ids[stage]} reported {_size(caps[stage])}, but stage {stage} (layers [{a}, {b})) "
                f"needs about {_size(need(k, u))} ({need(k, u):,} bytes: weights, gradients, optimizer state and "
                f"a batch of activations) and no other split fits: register a device with more memory, more "
                f"devices, or use smaller batches"
            )
    raise PartitionError(f"no split of the layers over {len(ids)} devices fits their memory")


def _costs(layers: Sequence[Layer], unit_costs: Sequence[float] | None) -> list[float]:
    """Each unit's cost per sample: measured (``unit_costs``, one per unit), else its training FLOPs."""
    groups = units(layers)
    if unit_costs is None:
        return [train_flops_per_sample(layers, a, b) for a, b in groups]
    if len(unit_costs) != len(groups) or not all(c >= 0 and math.isfinite(c) for c in unit_costs):
        raise PartitionError(f"unit_costs must be {len(groups)} numbers >= 0, one per unit, got {list(unit_costs)}")
    return list(unit_costs)


def _better(score: tuple[float, float], than: tuple[float, float]) -> bool:
    """A lower slowest stage, or as low (to rounding) and better balanced: the first order found
    (the devices as given) keeps ties."""
    (slowest, squares), (best_slowest, best_squares) = score, than
    if slowest < best_slowest * (1 - 1e-9):
        return True
    return slowest <= best_slowest * (1 + 1e-9) and squares < best_squares * (1 - 1e-9)


SPEED_MARGIN = 0.9  # a speed-aware plan is taken when its slowest stage is expected 10% faster
MAX_ORDER_WORK = 2_000_000  # units^2 x stages x orders a plan may try: well under a second


def _orders(speeds: Sequence[float], caps: Sequence[int | None], num_units: int) -> list[list[int]]:
    """The device orders a plan tries: the devices as given first, then every other order that
    differs in what it puts where (devices of the same speed and memory are interchangeable),
    or, for a plan too large to try them all, fastest first and slowest first."""
    n = len(speeds)
    given = list(range(n))
    kind = [(speeds[i], caps[i]) for i in given]
    if math.factorial(n) * n * num_units**2 > MAX_ORDER_WORK:
        fastest = sorted(given, key=lambda i: -speeds[i])
        return [given, fastest, fastest[::-1]]
    seen, out = set(), []
    for order in itertools.permutations(given):
        key = tuple(kind[i] for i in order)
        if key not in seen:
            seen.add(key)
            out.append(list(order))
    return out


def assign(
    layers: Sequence[Layer],
    unit_ranges: Sequence[tuple[int, int]],
    device_ids: Sequence[str | None],
    rows: int = 1,
    gflops: Sequence[float | None] = (),
    unit_costs: Sequence[float] | None = None,
) -> list[StageAssignment]:
    """Stage assignments for ranges of ``units(layers)``, one per device, with their estimates
    (with the devices' ``gflops``, each stage's compute time a batch of ``rows``, from its units'
    costs: ``unit_costs``, else FLOPs). ``plan`` chooses the ranges by cost; the benchmarks also
    assign ``partition``'s equal counts."""
    groups = units(layers)
    costs = _costs(layers, unit_costs)
    out = []
    for i, ((k, u), dev) in enumerate(zip(unit_ranges, device_ids, strict=True)):
        a, b = groups[k][0], groups[u - 1][1]
        params = sum(layer.params for layer in layers[a:b])
        flops = train_flops_per_sample(layers, a, b)
        speed = gflops[i] if i < len(gflops) else None
        expected = float(f"{sum(costs[k:u]) * rows / (speed * 1e9) * 1e3:.4g}") if speed else None
        out.append(StageAssignment(i, a, b, dev, params, flops, memory_bytes(layers, a, b, rows), expected))
    return out
