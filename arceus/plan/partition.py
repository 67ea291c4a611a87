"""Split L layers over D devices as contiguous half-open ranges (plain data, no torch)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import PartitionError

__all__ = ["StageAssignment", "partition", "plan"]


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


def partition(num_layers: int, num_devices: int) -> list[tuple[int, int]]:
    """Return ``num_devices`` ranges ``(start, end)`` covering ``range(num_layers)``.

    Every stage gets ``L // D`` layers and the first ``L % D`` stages one more, as the
    original Arceus did (earlier stages hold the input layer, usually the widest).
    """
    if num_layers < 1:
        raise PartitionError(f"cannot partition a model with {num_layers} layers (L must be >= 1)")
    if not 1 <= num_devices <= num_layers:
        raise PartitionError(
            f"cannot split L={num_layers} layers over D={num_devices} devices: "
            f"need 1 <= D <= L (every device must hold at least one layer)"
        )
    base, extra = divmod(num_layers, num_devices)
    ranges, start = [], 0
    for d in range(num_devices):
        end = start + base + (1 if d < extra else 0)
        ranges.append((start, end))
        start = end
    return ranges


def plan(num_layers: int, device_ids: list[int] | int) -> list[StageAssignment]:
    """The pipeline plan: stage i holds layers ``[start, end)`` on ``device_ids[i]``."""
    ids: list[int | None] = list(range(device_ids)) if isinstance(device_ids, int) else list(device_ids)
    ranges = partition(num_layers, len(ids))
    return [StageAssignment(i, s, e, dev) for i, ((s, e), dev) in enumerate(zip(ranges, ids, strict=True))]
