"""Run events (progress, per-epoch metrics, per-stage timings, errors) in a Redis stream.

Written as they happen by the stages; read by the local launcher, the CLI and the API.
Entries are small JSON objects; progress events are throttled, so the stream grows with
run time (a few entries a second at most), not with the number of steps.

``JobFeed`` is a job's whole story in order: its state changes (``keys.job_events``, written by
``JobStore.transition``) merged with the events of each run they start, resumable from a cursor.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from . import keys
from .errors import ConfigError
from .keys import RunKeys

__all__ = ["EVENTS_PER_READ", "FINAL_STATES", "EventLog", "FeedCursor", "JobFeed"]

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


# A job in one of these has no run under way: its feed has nothing more to say until someone
# trains or initializes it again.
FINAL_STATES = ("completed", "failed", "stopped")


@dataclass(frozen=True)
class FeedCursor:
    """Where a reader of a job's feed is: in its state stream, and in which run's events.
    Written ``<state entry>/<run id>/<run entry>`` (an SSE event id); the empty cursor is the
    job's beginning."""

    state: str = "0-0"
    run_id: str = ""
    run: str = "0-0"

    def __str__(self) -> str:
        return f"{self.state}/{self.run_id}/{self.run}"

    @classmethod
    def parse(cls, text: str | None) -> FeedCursor:
        if not text:
            return cls()
        parts = text.split("/")
        if len(parts) != 3 or not (_entry_ok(parts[0]) and _RUN.fullmatch(parts[1]) and _entry_ok(parts[2])):
            raise ConfigError("Last-Event-ID", f"{text[:80]!r} is not an event id of this feed (<entry>/<run>/<entry>)")
        return cls(*parts)


_ENTRY = re.compile(r"(\d{1,20})-(\d{1,20})")
_RUN = re.compile(r"[0-9a-zA-Z_-]{0,64}")


def _entry_ok(text: str) -> bool:
    """A stream entry id Redis would take: two unsigned 64-bit integers."""
    m = _ENTRY.fullmatch(text)
    return m is not None and int(m[1]) < 2**64 and int(m[2]) < 2**64


class JobFeed:
    """Follow one job: every state change, and between them the events of the run each one
    started, in the order Redis stamped them."""

    def __init__(self, r: redis.Redis, job_id: str) -> None:
        self.r, self.job_id, self.key = r, job_id, keys.job_events(job_id)

    def beginning(self, run_id: str | None) -> FeedCursor:
        """Where a reader with no cursor starts: the job's first state change; for a job made
        before jobs had a state stream, its current run's first event."""
        if run_id and not self.r.exists(self.key):
            return FeedCursor(run_id=run_id)
        return FeedCursor()

    def read(self, cursor: FeedCursor, block_ms: int | None = None) -> tuple[FeedCursor, list[tuple[FeedCursor, dict]]]:
        """The events after ``cursor`` (waiting up to ``block_ms`` for one), each with the cursor
        that resumes after it; and the cursor after them all. A state change that starts another
        run ends the batch, so the new run is read from its beginning in the next one."""
        streams = {self.key: cursor.state}
        if cursor.run_id:
            streams[RunKeys(self.job_id, cursor.run_id).events] = cursor.run
        reply = self.r.xread(streams, count=EVENTS_PER_READ, block=block_ms) or ()
        # In Redis's time order; within one millisecond a run's events before a state change (a
        # run writes its last events before the change that ends it is made).
        entries = []
        for key, items in reply:
            is_state = key == self.key.encode()
            for entry_id, fields in items:
                ms, seq = _entry_key(entry_id)
                entries.append((ms, is_state, seq, entry_id.decode(), fields))
        entries.sort(key=lambda e: e[:3])
        # A stream that filled its count may hold older entries than the other's last: stop there.
        full = [_entry_key(items[-1][0]) for _, items in reply if len(items) >= EVENTS_PER_READ]
        if full:
            entries = [e for e in entries if (e[0], e[2]) <= min(full)]
        out = []
        for _, is_state, _, entry_id, fields in entries:
            event = json.loads(fields[b"e"])
            if not is_state:
                cursor = FeedCursor(cursor.state, cursor.run_id, entry_id)
                out.append((cursor, event))
                continue
            run_id = event.get("run_id") or ""
            moved = bool(event.get("new_run")) and run_id != cursor.run_id
            cursor = FeedCursor(entry_id, run_id, "0-0") if moved else FeedCursor(entry_id, cursor.run_id, cursor.run)
            out.append((cursor, event))
            if moved:  # what is left of the old run is older than this; the new run's next
                break
        return cursor, out


def _entry_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)
