"""How much memory autograd keeps for backward: the activation memory a schedule bounds.

The resident set of a stage is mostly torch itself (hundreds of MB) and moves with the
allocator's caching, so it shows a schedule's effect only coarsely. ``SavedTensorMeter``
counts exactly what matters: the bytes of the tensors autograd saved for backward and
has not released yet, each storage once, parameters excluded (they are held anyway).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

__all__ = ["SavedTensorMeter"]


class SavedTensorMeter:
    def __init__(self, params: Iterable[torch.Tensor]) -> None:
        self._params = {p.untyped_storage().data_ptr() for p in params}
        self._held: dict[int, list[int]] = {}  # storage address -> [references, bytes]
        self.now = 0  # bytes held now; largest right after a forward

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        """Count what the forward passes run inside this block save for their backward."""
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            yield

    def _pack(self, t: torch.Tensor) -> object:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key in self._params:
            return t
        held = self._held.get(key)
        if held is None:
            held = self._held[key] = [0, storage.nbytes()]
            self.now += held[1]
        held[0] += 1
        # Detached: a tensor an op saves of its own output would otherwise point back at its
        # grad_fn through this object, a cycle that outlives a graph dropped without backward.
        return _Saved(self, key, t.detach())

    def _release(self, key: int) -> None:
        held = self._held[key]
        held[0] -= 1
        if held[0] == 0:
            del self._held[key]
            self.now -= held[1]


class _Saved:
    """A saved tensor; autograd drops it once the backward that needed it has run."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: torch.Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


def _unpack(saved: object) -> torch.Tensor:
    return saved.tensor if isinstance(saved, _Saved) else saved
