"""Split a model's layers over D devices as contiguous half-open ranges (plain data, no torch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ..errors import PartitionError
from .layers import Layer

__all__ = ["StageAssignment", "partition", "plan", "units"]


@dataclass(frozen=True)
class StageAssignment:
    stage: int
    start_layer: int  # inclusive
    end_layer: int  # exclusive
    device_id: int | None = None

    @property
    def num_layers(self) -> int:
        return self.end_layer - self.start_layer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> StageAssignment:
        return cls(int(d["stage"]), int(d["start_layer"]), int(d["end_layer"]), d.get("device_id"))


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
            f"must hold at least one layer; L counts the layers with parameters, the others go with them)"
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


def plan(layers: Sequence[Layer], device_ids: list[int] | int) -> list[StageAssignment]:
    """The pipeline plan: stage i holds layers ``[start, end)`` on ``device_ids[i]``."""
    ids: list[int | None] = list(range(device_ids)) if isinstance(device_ids, int) else list(device_ids)
    groups = units(layers)
    return [
        StageAssignment(i, groups[a][0], groups[b - 1][1], dev)
        for i, ((a, b), dev) in enumerate(zip(partition(len(groups), len(ids)), ids, strict=True))
    ]
