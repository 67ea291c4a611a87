"""Run events (progress, per-epoch metrics, per-stage timings, errors) in a Redis stream.

Written as they happen by the stages; read by the local launcher, the CLI and the API.
Entries are small JSON objects; progress events are throttled, so the stream grows with
run time (a few entries a second at most), not with the number of steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import redis

from .keys import RunKeys

__all__ = ["EVENTS_PER_READ", "EventLog"]

EVENTS_PER_READ = 1000


class EventLog:
    def __init__(self, r: redis.Redis, run: RunKeys) -> None:
        self.r, self.key = r, run.events

    def emit(self, kind: str, **fields: object) -> None:
        self.r.xadd(self.key, {"e": json.dumps({"type": kind, "time": time.time(), **fields})})

    def read(self, after: bytes = b"0-0", block_ms: int | None = None) -> Iterator[tuple[bytes, dict]]:
        reply = self.r.xread({self.key: after}, count=EVENTS_PER_READ, block=block_ms)
        for _, entries in reply or ():
            for entry_id, fields in entries:
                yield entry_id, json.loads(fields[b"e"])

    def latest(self, kinds: tuple[str, ...], scan: int = 200) -> dict[str, dict]:
        """The newest event of each kind among the last ``scan`` entries."""
        found: dict[str, dict] = {}
        for _, fields in self.r.xrevrange(self.key, count=scan):
            ev = json.loads(fields[b"e"])
            if ev["type"] in kinds and ev["type"] not in found:
                found[ev["type"]] = ev
        return found

    def all(self) -> list[dict]:
        return [json.loads(f[b"e"]) for _, f in self.r.xrange(self.key)]
