"""safetensors files at the byte level, without torch: read a header, select and merge tensors.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON (each tensor's
dtype, shape and ``data_offsets`` into the data that follows, plus an optional string map
``__metadata__``), then the tensors' bytes. Nothing in it is executable, so reading one never
unpickles anything. The API merges checkpoint parts into one model file, and slices a
checkpoint for a new split, by copying byte ranges: it never imports torch. The tensors
themselves are read with the safetensors library (``engine.state``).
"""

from __future__ import annotations

import json
import math
import os
import struct
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import ArceusError

__all__ = ["Combined", "TensorFile", "TensorFileError", "combine", "fsync_dir", "write_atomic"]

MAX_HEADER = 100 << 20  # bytes of JSON; a real header is a few hundred bytes a tensor
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _count(v: object) -> bool:
    return type(v) is int and v >= 0


class TensorFileError(ArceusError):
    """A file that is not a well-formed safetensors file."""


@dataclass(frozen=True)
class TensorFile:
    """One safetensors file's header: ``tensors`` (name -> dtype, shape, data_offsets) and
    ``metadata``; the tensors' bytes start at ``data_start``."""

    path: Path
    tensors: dict[str, dict]
    metadata: dict[str, str]
    data_start: int

    @classmethod
    def read(cls, path: Path) -> TensorFile:
        path = Path(path)
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise TensorFileError(f"{path} is not a safetensors file: {size} bytes")
            (n,) = struct.unpack("<Q", raw)
            if n > min(MAX_HEADER, size - 8):
                raise TensorFileError(f"{path} is not a safetensors file: a header of {n} bytes in a file of {size}")
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
                raise TensorFileError(f"{path}: its header is not JSON ({type(e).__name__})") from None
        if not isinstance(header, dict):
            raise TensorFileError(f"{path}: its header is not a JSON object")
        metadata = header.pop("__metadata__", None) or {}
        data_len = size - 8 - n
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise TensorFileError(f"{path}: its __metadata__ is not a map of strings")
        for name, t in header.items():
            try:
                start, end = t["data_offsets"]
                shape, width = t["shape"], _DTYPE_BYTES[t["dtype"]]
            except (KeyError, TypeError, ValueError):
                raise TensorFileError(f"{path}: tensor {name!r} has a malformed entry {str(t)[:200]}") from None
            if not isinstance(shape, list) or not all(_count(v) for v in (start, end, *shape)):
                raise TensorFileError(f"{path}: tensor {name!r} has offsets or a shape that are not counts")
            if not start <= end <= data_len or end - start != math.prod(shape) * width:
                raise TensorFileError(f"{path}: tensor {name!r} lies outside the file or has the wrong size")
        return cls(path, header, metadata, 8 + n)


@dataclass(frozen=True)
class Combined:
    """A safetensors file to be written: its ``header`` bytes, then ``ranges`` (path, offset,
    length) of the source files, in order."""

    header: bytes
    ranges: tuple[tuple[Path, int, int], ...]

    @property
    def size(self) -> int:
        return len(self.header) + sum(n for _, _, n in self.ranges)

    def chunks(self, chunk: int = 1 << 20) -> Iterator[bytes]:
        # Every source is opened first: one removed meanwhile (an older checkpoint pruned while
        # a download streams) stays readable through its open file.
        files = {path: open(path, "rb") for path in dict.fromkeys(p for p, _, _ in self.ranges)}  # noqa: SIM115
        try:
            yield self.header
            for path, offset, length in self.ranges:
                f = files[path]
                f.seek(offset)
                while length > 0:
                    data = f.read(min(chunk, length))
                    if not data:
                        raise TensorFileError(f"{path} ended early: was it changed while being read?")
                    length -= len(data)
                    yield data
        finally:
            for f in files.values():
                f.close()

    def to_bytes(self) -> bytes:
        return b"".join(self.chunks())


def combine(
    sources: Sequence[TensorFile], keep: Callable[[str], bool] = lambda name: True, metadata: dict | None = None
) -> Combined:
    """The tensors of ``sources`` whose name ``keep`` accepts, as one file with ``metadata``
    (values must be strings). A name in two sources is an error: parts of a checkpoint are disjoint."""
    entries, ranges, offset, seen = {}, [], 0, {}
    for src in sources:
        for name, t in sorted(src.tensors.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if not keep(name):
                continue
            if name in seen:
                raise TensorFileError(f"tensor {name!r} is in both {seen[name]} and {src.path}")
            seen[name] = src.path
            start, end = t["data_offsets"]
            entries[name] = {"dtype": t["dtype"], "shape": t["shape"], "data_offsets": [offset, offset + end - start]}
            ranges.append((src.path, src.data_start + start, end - start))
            offset += end - start
    header = {"__metadata__": {k: str(v) for k, v in (metadata or {}).items()}, **entries}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors' bytes start 8-aligned, as the library writes them
    return Combined(struct.pack("<Q", len(text)) + text, tuple(ranges))


def write_atomic(path: Path, chunks: bytes | Iterable[bytes], check: Callable[[Path], object] | None = None) -> None:
    """Write ``path`` so that it is either absent or complete: a temporary file beside it,
    fsync, ``check`` it (which raises for a bad one, leaving ``path`` as it was), rename it
    over ``path``, then fsync the directory so the rename itself survives a crash."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename or unlink in ``folder`` survive a crash (where directories can be synced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform whose directories cannot be opened (Windows): the rename is what it has
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
