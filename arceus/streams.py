"""Point-to-point links between neighbouring stages over Redis streams, with back-pressure.

One stream per (direction, receiving stage): ``<run prefix>:fwd:<s>`` carries activations
into stage ``s``, ``<run prefix>:bwd:<s>`` carries gradients into it. Flow control is
credit based: a sender may have at most ``window`` entries that its receiver has not yet
taken; the receiver deletes each entry it takes and hands back a credit (in the same
request as its read of the next). So a stream never holds more than ``window`` entries,
and a fast stage blocks (back-pressure) instead of filling Redis.

Communication overlaps compute without threads: each link has a connection of its own
and keeps commands in flight on it. A send writes its XADD and returns (the reply is read
later); a receiver asks for the next entry as soon as it hands one out, so the entry
arrives in the socket while the stage computes. One thread per stage means no thread
hand-offs on the critical path: measured here, they cost more than the hop itself.

Every wait is cut into short blocking calls, so it notices an aborted run within a
second, and fails with ``StageTimeout`` naming the stage and what it waited for.
"""

from __future__ import annotations

import time

import redis

from .errors import RunAborted, StageTimeout

__all__ = ["Abort", "Receiver", "Sender", "stream_key"]

_POLL_S = 1.0  # longest single blocking call; bounds how late an abort is noticed


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


def _connection(r: redis.Redis) -> redis.connection.AbstractConnection:
    """A connection of the link's own, outside the client's pool: the link keeps commands in
    flight on it (their replies are read later, in order), which a pooled connection must not."""
    pool = r.connection_pool
    # No health-check PING before a command: it would read a reply meant for an earlier one.
    return pool.connection_class(**{**pool.connection_kwargs, "health_check_interval": 0})


def _xadd(key: str, fields: dict[str, bytes]) -> list:
    cmd: list = ["XADD", key, "*"]
    for name, value in fields.items():
        cmd += [name, value]
    return cmd


class Sender:
    """Appends entries to a stream without waiting for Redis: each XADD is written to the
    socket and its reply read later (at most ``window`` are outstanding), so a stage goes on
    computing while its message travels. Blocks only when its receiver holds ``window``
    unconsumed entries (back-pressure)."""

    def __init__(self, r: redis.Redis, key: str, window: int, timeout_s: float, abort: Abort, who: str) -> None:
        if window < 1:
            raise ValueError(f"stream window must be >= 1, got {window}")
        self.key, self.credit_key = key, key + ":credit"
        self.window, self.timeout_s, self.abort, self.who = window, timeout_s, abort, who
        self.conn = _connection(r)
        self._credits = window
        self._unread = 0  # XADD replies not read yet

    def send(self, fields: dict[str, bytes], what: str) -> None:
        if self._credits == 0:
            self._wait_for_credit(what)
        self._credits -= 1
        self.conn.send_command(*_xadd(self.key, fields))
        self._unread += 1
        if self._unread >= self.window:
            self.flush()

    def flush(self) -> None:
        """Read the replies of the XADDs in flight; raises the error Redis answered, if any."""
        while self._unread:
            self._unread -= 1
            try:
                self.conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError):
                self._unread = 0  # the connection is gone, and the replies with it
                raise

    def _wait_for_credit(self, what: str) -> None:
        self.flush()
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            self.conn.send_command("BLPOP", self.credit_key, f"{max(0.01, min(_POLL_S, left)):.3f}")
            if self.conn.read_response():
                self.conn.send_command("LPOP", self.credit_key, self.window)
                self._credits += 1 + len(self.conn.read_response() or [])
                return
            self.abort.check()
            if left <= 0:
                raise StageTimeout(
                    f"{self.who} waited {self.timeout_s:.0f}s to send {what} on {self.key}: "
                    f"its receiver consumed none of the last {self.window} entries"
                )

    def close(self) -> None:
        try:
            if self.conn.is_connected:
                self.flush()
        finally:
            self.conn.disconnect()


class Receiver:
    """Reads a stream in order, one read ahead: as soon as an entry is handed out, the read
    of the next one is on its way (with the acknowledgement of this one), so the entry
    travels into this process's socket while the stage computes."""

    def __init__(self, r: redis.Redis, key: str, timeout_s: float, abort: Abort, who: str) -> None:
        self.r, self.key, self.credit_key = r, key, key + ":credit"
        self.timeout_s, self.abort, self.who = timeout_s, abort, who
        self.conn = _connection(r)
        self._last = b"0-0"
        self._unacked: bytes | None = None
        self._replies = 0  # replies of the request in flight; its last is the XREAD's

    def recv(self, what: str) -> tuple[bytes, dict[bytes, bytes]]:
        """Next entry ``(id, fields)``."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if not self._replies:
                self._request(deadline - time.monotonic())
            reply = self._read()
            if reply:
                # One stream asked for: RESP3 answers {key: entries}, RESP2 [[key, entries]].
                entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
                entry_id, flat = entries[0]
                self._last = self._unacked = entry_id
                self._request(_POLL_S)
                return entry_id, dict(zip(flat[::2], flat[1::2], strict=True))
            self.abort.check()
            if deadline - time.monotonic() <= 0:
                raise StageTimeout(f"{self.who} waited {self.timeout_s:.0f}s for {what} on {self.key}")

    def _request(self, wait_s: float) -> None:
        """Acknowledge the entry handed out last (delete it, hand its sender a credit) and ask
        for the next, blocking at most ``wait_s`` (cut to ``_POLL_S``) in Redis."""
        cmds: list[tuple] = []
        if self._unacked is not None:
            cmds += [("XDEL", self.key, self._unacked), ("RPUSH", self.credit_key, 1)]
            self._unacked = None
        block_ms = max(1, int(min(_POLL_S, wait_s) * 1000))
        cmds.append(("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", self.key, self._last))
        self.conn.send_packed_command(self.conn.pack_commands(cmds))
        self._replies = len(cmds)

    def _read(self) -> list | None:
        reply = None
        while self._replies:
            self._replies -= 1
            try:
                reply = self.conn.read_response()
            except (redis.ConnectionError, redis.TimeoutError):
                self._replies = 0
                raise
        return reply

    def close(self) -> None:
        """Drop the (now consumed) stream and its credits; a read still in flight ends with the connection."""
        self.conn.disconnect()
        self.r.delete(self.key, self.credit_key)
