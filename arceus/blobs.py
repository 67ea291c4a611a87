"""Byte strings of any size in Redis: a list of chunks under one key, with an expiry.

Checkpoint parts go from the stages to the API's machine this way, and a checkpoint's
slices back to the workers that load them. No single Redis command then carries more than
``CHUNK`` bytes, however large a stage's part is.
"""

from __future__ import annotations

import redis

__all__ = ["CHUNK", "get_blob", "put_blob"]

CHUNK = 8 << 20


def put_blob(r: redis.Redis, key: str, data: bytes, ttl_s: int) -> None:
    """Replace ``key`` with ``data``, all at once for readers (one MULTI/EXEC)."""
    view = memoryview(data)
    pipe = r.pipeline(transaction=True)
    pipe.delete(key)
    for start in range(0, len(view), CHUNK):
        pipe.rpush(key, view[start : start + CHUNK].tobytes())
    if not len(view):
        pipe.rpush(key, b"")
    pipe.expire(key, ttl_s)
    pipe.execute()


def get_blob(r: redis.Redis, key: str) -> bytes | None:
    """The bytes under ``key``, or None when there are none."""
    chunks = r.lrange(key, 0, -1)
    return b"".join(chunks) if chunks else None
