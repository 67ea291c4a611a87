"""Self-describing tensor payloads: a fixed header, then the codec's body. Never pickled.

Layout (little endian)::

    magic b"ARCW" | version u8 | name_len u8 | codec name (ascii) | dtype u8 | ndim u8 | dims u32 * ndim | body

``decode`` checks every field, and that the body is exactly as long as the header
says, before it allocates anything; so a hostile payload costs at most
``max_elements`` elements, and never more than a small multiple of its own length.
"""

from __future__ import annotations

import math
import struct

import torch

from ..errors import PayloadError
from .codecs import get_codec

__all__ = ["MAGIC", "VERSION", "decode", "encode", "encode_parts", "raw_nbytes"]

MAGIC = b"ARCW"
VERSION = 1
MAX_NDIM = 8
_DTYPES = {1: torch.float32, 2: torch.float16, 3: torch.bfloat16, 4: torch.int64, 5: torch.uint8, 6: torch.int32}
_CODES = {v: k for k, v in _DTYPES.items()}
_HEAD = struct.Struct("<4sBB")
_META = struct.Struct("<BB")


def raw_nbytes(x: torch.Tensor) -> int:
    """Bytes the tensor takes uncompressed (what fp32 on the wire would cost)."""
    return x.numel() * x.element_size()


def encode(x: torch.Tensor, codec: str) -> bytes:
    return b"".join(encode_parts(x, codec))


def encode_parts(x: torch.Tensor, codec: str) -> tuple[bytes, memoryview]:
    """``encode``'s bytes in two parts, header and body, not joined. The body of ``raw`` is a view
    of ``x``'s own memory (no copy): write the parts out before ``x`` changes."""
    c = get_codec(codec)
    if x.dtype not in _CODES or not c.accepts(x.dtype):
        raise PayloadError(f"codec {codec!r} cannot encode a tensor of dtype {x.dtype}")
    if x.dim() > MAX_NDIM:
        raise PayloadError(f"tensor has {x.dim()} dimensions; at most {MAX_NDIM} travel on the wire")
    name = c.name.encode("ascii")
    flat = x.detach().cpu().contiguous().reshape(-1)
    meta = _META.pack(_CODES[x.dtype], x.dim()) + struct.pack(f"<{x.dim()}I", *x.shape)
    head = _HEAD.pack(MAGIC, VERSION, len(name)) + name + meta
    return head, memoryview(c.encode(flat)).cast("B")


def decode(data: bytes | memoryview, max_elements: int = 1 << 26) -> torch.Tensor:
    """Tensor from ``encode``'s bytes; raises ``PayloadError`` naming what is wrong."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise PayloadError(f"payload truncated: {len(view)} bytes, shorter than the {_HEAD.size}-byte header")
    magic, version, name_len = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise PayloadError(f"not an Arceus payload: magic {bytes(magic)!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise PayloadError(f"payload format version {version} is not supported (this build reads {VERSION})")
    pos = _HEAD.size
    if len(view) < pos + name_len + _META.size:
        raise PayloadError("payload truncated inside its header (codec name / dtype / ndim)")
    try:
        name = bytes(view[pos : pos + name_len]).decode("ascii")
    except UnicodeDecodeError:
        raise PayloadError("payload codec name is not ascii") from None
    codec = get_codec(name)
    pos += name_len
    dtype_code, ndim = _META.unpack_from(view, pos)
    pos += _META.size
    dtype = _DTYPES.get(dtype_code)
    if dtype is None:
        raise PayloadError(f"payload dtype code {dtype_code} is unknown (known: {sorted(_DTYPES)})")
    if not codec.accepts(dtype):
        raise PayloadError(f"codec {name!r} cannot carry dtype {dtype}")
    if ndim > MAX_NDIM:
        raise PayloadError(f"payload declares {ndim} dimensions; at most {MAX_NDIM} are allowed")
    if len(view) < pos + 4 * ndim:
        raise PayloadError(f"payload truncated inside its shape ({ndim} dimensions declared)")
    shape = struct.unpack_from(f"<{ndim}I", view, pos)
    pos += 4 * ndim
    numel = math.prod(shape)
    if numel > max_elements:
        raise PayloadError(f"payload declares shape {list(shape)} = {numel} elements, over the limit of {max_elements}")
    expected = codec.body_size(numel, dtype)
    body = view[pos:]
    if len(body) != expected:
        kind = "truncated" if len(body) < expected else "oversized"
        raise PayloadError(
            f"payload {kind}: codec {name!r} needs {expected} body bytes for shape {list(shape)}, got {len(body)}"
        )
    return codec.decode(body, numel, dtype).view(shape)
