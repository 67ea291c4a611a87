"""Point-to-point links between neighbouring stages over Redis streams, with back-pressure.

One stream per (direction, receiving stage): ``<run prefix>:fwd:<s>`` carries activations
into stage ``s``, ``<run prefix>:bwd:<s>`` carries gradients into it. Flow control is
credit based: a sender may have at most ``window`` entries that its receiver has not yet
consumed; the receiver deletes each entry it consumed and hands back a credit (in the
same round trip as its next read). So a stream never holds more than ``window`` entries,
and a fast stage blocks (back-pressure) instead of filling Redis.

Every wait is cut into short blocking calls, so it notices an aborted run within a
second, and fails with ``StageTimeout`` naming the stage and what it waited for.
"""

from __future__ import annotations

import threading
import time

import redis

from .errors import RunAborted, StageTimeout

__all__ = ["Abort", "Receiver", "Sender", "Stopped", "stream_key"]

_POLL_S = 1.0  # longest single blocking call; bounds how late an abort is noticed


class Stopped(Exception):
    """A wait ended because its owner asked (not an error of the run)."""


def stream_key(prefix: str, direction: str, stage: int) -> str:
    return f"{prefix}:{direction}:{stage}"


HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 6.0  # a stage silent this long is presumed lost (its process died)


class Abort:
    """The run's abort flag and its stages' heartbeats; every wait checks both.

    The first reason set wins. Once ``watch`` names the stages, ``check`` also fails when
    one of them stopped beating without saying it finished: a killed worker is noticed
    by its neighbours within ``HEARTBEAT_TTL_S`` seconds instead of after a long timeout.
    """

    def __init__(self, r: redis.Redis, prefix: str) -> None:
        self.r, self.prefix, self.key = r, prefix, f"{prefix}:abort"
        self._watched: list[int] = []

    def set(self, reason: str) -> None:
        self.r.set(self.key, reason, nx=True, ex=7 * 24 * 3600)

    def reason(self) -> str | None:
        v = self.r.get(self.key)
        return v.decode() if v is not None else None

    def beat(self, stage: int, finished: bool = False) -> None:
        key = f"{self.prefix}:alive:{stage}"
        if finished:
            self.r.set(key, "done", ex=24 * 3600)
        else:
            self.r.set(key, "alive", ex=int(HEARTBEAT_TTL_S))

    def watch(self, stages: list[int]) -> None:
        self._watched = list(stages)

    def check(self) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.key)
        for s in self._watched:
            pipe.get(f"{self.prefix}:alive:{s}")
        reason, *beats = pipe.execute()
        if reason is not None:
            raise RunAborted(reason.decode())
        for s, beat in zip(self._watched, beats, strict=True):
            if beat is None:
                reason = f"stage {s} stopped responding (no heartbeat for {HEARTBEAT_TTL_S:.0f}s): its worker was lost"
                self.set(reason)
                raise RunAborted(self.reason() or reason)


class Sender:
    def __init__(self, r: redis.Redis, key: str, window: int, timeout_s: float, abort: Abort, who: str) -> None:
        if window < 1:
            raise ValueError(f"stream window must be >= 1, got {window}")
        self.r, self.key, self.credit_key = r, key, key + ":credit"
        self.window, self.timeout_s, self.abort, self.who = window, timeout_s, abort, who
        self._credits = window

    def send(self, fields: dict[str, bytes], what: str) -> None:
        if self._credits == 0:
            self._wait_for_credit(what)
        self._credits -= 1
        self.r.xadd(self.key, fields)

    def _wait_for_credit(self, what: str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            got = self.r.blpop([self.credit_key], timeout=max(0.01, min(_POLL_S, left)))
            if got:
                more = self.r.lpop(self.credit_key, self.window) or []
                self._credits += 1 + len(more)
                return
            self.abort.check()
            if left <= 0:
                raise StageTimeout(
                    f"{self.who} waited {self.timeout_s:.0f}s to send {what} on {self.key}: "
                    f"its receiver consumed none of the last {self.window} entries"
                )


class Receiver:
    def __init__(self, r: redis.Redis, key: str, timeout_s: float, abort: Abort, who: str) -> None:
        self.r, self.key, self.credit_key = r, key, key + ":credit"
        self.timeout_s, self.abort, self.who = timeout_s, abort, who
        self._last = b"0-0"
        self._unacked: bytes | None = None

    def recv(self, what: str, stop: threading.Event | None = None) -> tuple[bytes, dict[bytes, bytes]]:
        """Next entry ``(id, fields)``; acknowledges the previous one in the same round trip.
        ``stop`` (checked between blocking calls) ends the wait with ``Stopped``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if stop is not None and stop.is_set():
                raise Stopped(f"{self.who}: stopped waiting for {what}")
            left = deadline - time.monotonic()
            pipe = self.r.pipeline(transaction=False)
            self._queue_ack(pipe)
            pipe.xread({self.key: self._last}, count=1, block=max(1, int(min(_POLL_S, left) * 1000)))
            reply = pipe.execute()[-1]
            if reply:
                entry_id, fields = reply[0][1][0]
                self._last = self._unacked = entry_id
                return entry_id, fields
            self.abort.check()
            if left <= 0:
                raise StageTimeout(f"{self.who} waited {self.timeout_s:.0f}s for {what} on {self.key}")

    def _queue_ack(self, pipe: redis.client.Pipeline) -> None:
        if self._unacked is not None:
            pipe.xdel(self.key, self._unacked)
            pipe.rpush(self.credit_key, 1)
            self._unacked = None

    def close(self) -> None:
        """Acknowledge the last entry and drop the (now empty) stream and its credits."""
        pipe = self.r.pipeline(transaction=False)
        self._queue_ack(pipe)
        pipe.delete(self.key, self.credit_key)
        pipe.execute()
