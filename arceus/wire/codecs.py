"""Codecs turn a float tensor into bytes and back; each is a small class in a registry.

A codec only sees a flat, contiguous tensor; the payload header (``payload.py``) carries
its name, the dtype and the shape, so a message picks its own decoder.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod

import numpy as np
import torch

from ..errors import PayloadError

__all__ = ["CODECS", "BlockInt8", "Codec", "Fp16", "Raw", "get_codec"]


class Codec(ABC):
    name: str
    lossless: bool

    @abstractmethod
    def encode(self, x: torch.Tensor) -> bytes | memoryview:
        """Body bytes for the flat contiguous tensor ``x`` (a view of ``x``'s own memory, for ``raw``)."""

    @abstractmethod
    def body_size(self, numel: int, dtype: torch.dtype) -> int:
        """Exact body length for ``numel`` elements: lets a decoder reject a payload before allocating."""

    @abstractmethod
    def decode(self, body: memoryview, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """The flat tensor of ``numel`` elements of ``dtype``; ``len(body) == body_size(...)`` is checked first."""

    def accepts(self, dtype: torch.dtype) -> bool:
        return dtype.is_floating_point


_TINY = torch.finfo(torch.float32).tiny


def _from_bytes(body: memoryview, dtype: torch.dtype) -> torch.Tensor:
    # bytearray: a writable copy the tensor owns (torch.frombuffer would alias read-only bytes).
    return torch.frombuffer(bytearray(body), dtype=dtype) if len(body) else torch.empty(0, dtype=dtype)


def _view_bytes(body: memoryview, dtype: torch.dtype) -> torch.Tensor:
    """A read-only view, no copy: only for tensors the decoder reads once and then drops."""
    if not len(body):
        return torch.empty(0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable": we never write to it
        return torch.frombuffer(body, dtype=dtype)


class Raw(Codec):
    """Lossless: the tensor's own bytes (fp32 activations, int64 labels)."""

    name, lossless = "raw", True

    def accepts(self, dtype: torch.dtype) -> bool:
        return True

    def encode(self, x: torch.Tensor) -> memoryview:
        return memoryview(x.view(torch.uint8).numpy())  # as bytes: numpy has no bfloat16. Not copied.

    def body_size(self, numel: int, dtype: torch.dtype) -> int:
        return numel * dtype.itemsize

    def decode(self, body: memoryview, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return _from_bytes(body, dtype)


class Fp16(Codec):
    """IEEE half precision: 2 bytes a value, ~3 significant digits, range +-65504."""

    name, lossless = "fp16", False

    def encode(self, x: torch.Tensor) -> bytes:
        return x.to(torch.float16).numpy().tobytes()

    def body_size(self, numel: int, dtype: torch.dtype) -> int:
        return 2 * numel

    def decode(self, body: memoryview, numel: int, dtype: torch.dtype) -> torch.Tensor:
        return _view_bytes(body, torch.float16).to(dtype, copy=True)  # never hand out the read-only view


class BlockInt8(Codec):
    """8-bit codes with one fp32 scale per block of ``block`` consecutive values.

    Asymmetric (the default, registered as ``int8``): code = round((x - lo) / s),
    s = (hi - lo) / 255, error at most (hi - lo) / 510, with lo stored beside s.
    Symmetric (``asymmetric=False``): code = round(x / s), s = absmax / 127, so the error
    of each value is at most s / 2 = absmax(block) / 254.
    Blocks follow the flattened (row-major) order, so with ``block`` dividing the row width
    a block never mixes two samples: a sample with tiny gradients keeps its own scale.
    """

    lossless = False

    def __init__(self, block: int = 64, asymmetric: bool = True, name: str = "int8") -> None:
        self.block, self.asymmetric, self.name = block, asymmetric, name
        self._params = 2 if asymmetric else 1

    def _blocks(self, numel: int) -> int:
        return -(-numel // self.block)

    def body_size(self, numel: int, dtype: torch.dtype) -> int:
        return 4 * self._params * self._blocks(numel) + numel

    def _padded(self, x: torch.Tensor, nb: int) -> torch.Tensor:
        pad = nb * self.block - x.numel()
        return (torch.nn.functional.pad(x, (0, pad)) if pad else x).view(nb, self.block)  # (blocks, block)

    def encode(self, x: torch.Tensor) -> bytes:
        n = x.numel()
        nb = self._blocks(n)
        xb = self._padded(x.float(), nb)
        # Per-op overhead dominates tensors this small: torch for the reductions, numpy
        # (~1 us a call) for the small steps and the float->int cast (~7x faster than torch's).
        if self.asymmetric:
            lo = xb.amin(dim=1)  # (amin + amax is several times faster than aminmax on CPU)
            # A constant block gets a tiny step: its codes are all 0 and it decodes to lo exactly.
            step = (xb.amax(dim=1) - lo).div_(255.0).clamp_min_(_TINY)
            head = torch.stack((lo, step), dim=1)  # (blocks, 2)
        else:
            step = xb.abs().amax(dim=1).div_(127.0).clamp_min_(_TINY)
            head = step
        if not np.isfinite(head.numpy()).all():
            raise PayloadError(f"codec {self.name} cannot encode NaN or infinite values")
        if self.asymmetric:
            codes = (xb - lo[:, None]).div_(step[:, None]).round_().clamp_(0, 255).numpy().astype(np.uint8)
        else:
            codes = (xb / step[:, None]).round_().clamp_(-127, 127).numpy().astype(np.int8)
        return head.numpy().tobytes() + codes.reshape(-1)[:n].tobytes()

    def decode(self, body: memoryview, numel: int, dtype: torch.dtype) -> torch.Tensor:
        nb = self._blocks(numel)
        head = np.frombuffer(body, dtype=np.float32, count=self._params * nb).reshape(nb, self._params)
        step = head[:, -1:]
        with np.errstate(over="ignore", invalid="ignore"):
            # Finite scales whose extreme code still decodes to a finite value: no inf/nan out of a decode.
            top = np.abs(head[:, :1]) + np.float32(255) * step if self.asymmetric else np.float32(127) * step
            if not (np.isfinite(top).all() and (step >= 0).all()):
                raise PayloadError(f"codec {self.name}: a block scale is negative, not finite or overflows")
        q = np.frombuffer(body, dtype=np.uint8 if self.asymmetric else np.int8, offset=4 * self._params * nb)
        pad = nb * self.block - numel
        if pad:
            q = np.concatenate((q, np.zeros(pad, dtype=q.dtype)))
        x = q.reshape(nb, self.block).astype(np.float32)  # (blocks, block), a new writable array
        x *= step
        if self.asymmetric:
            x += head[:, :1]
        out = torch.from_numpy(x.reshape(-1)[:numel])
        return out if dtype == torch.float32 else out.to(dtype)


# int8 = BlockInt8's defaults, blocks of 64 with min/max: measured (docs/wire.md) to halve the
# error of absmax on ReLU activations, which are never negative, for 0.06 more bytes per value.
CODECS: dict[str, Codec] = {c.name: c for c in (Raw(), Fp16(), BlockInt8())}
assert all(0 < len(n) < 32 and n.isascii() for n in CODECS), "codec names travel on the wire"


def get_codec(name: str) -> Codec:
    try:
        return CODECS[name]
    except KeyError:
        raise PayloadError(f"unknown codec {name!r} (known: {', '.join(CODECS)})") from None
