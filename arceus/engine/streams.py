"""Point-to-point links between neighbouring stages over Redis streams, with back-pressure.

One stream per (direction, receiving stage): ``RunKeys.fwd(s)`` carries activations
into stage ``s``, ``RunKeys.bwd(s)`` carries gradients into it (``arceus.keys``). Flow control is
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
from collections import deque
from collections.abc import Callable

import redis

from .. import keys
from ..errors import StageTimeout
from ..liveness import RunLiveness
from .resp import Buffer, Connection

Field = bytes | tuple[Buffer, ...]  # an entry's field value: bytes, or bytes in pieces (a payload)

__all__ = ["POLL_S", "Receiver", "Sender", "run_client"]

POLL_S = 1.0  # longest single blocking call; bounds how late an abort is noticed


def run_client(url: str, socket_timeout_s: float) -> redis.Redis:
    """A client of a Redis a stage or a worker uses in a run: the run's own (on the coordinator) or
    a stage's data Redis (``RunSpec.data_urls``). Either may be on a machine that vanishes without
    closing anything: a socket operation that makes no progress for ``socket_timeout_s``
    (``Settings.socket_timeout_s``) fails, and the stage reports it, instead of waiting for the
    kernel to give the connection up, which without keepalive it never does. Every blocking
    command blocks at most ``POLL_S``, well inside it."""
    return redis.Redis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=5,
                                socket_keepalive=True)  # fmt: skip


def _xadd(key: str, fields: dict[str, Field]) -> tuple:
    return ("XADD", key, "*", *(v for item in fields.items() for v in item))


class Sender:
    """Appends entries to a stream without waiting for Redis: each XADD is written to the
    socket and its reply read later, so a stage goes on computing while its message travels
    (on a slow link, the reply comes only once the whole payload is across). Credits come
    back the same way: once half the window is used, an LPOP of the credits goes out with
    the next XADD and is counted when its reply is read. A send blocks only when its receiver
    holds ``window`` unconsumed entries (back-pressure)."""

    def __init__(
        self, r: redis.Redis, key: str, window: int, timeout_s: float, liveness: RunLiveness, who: str
    ) -> None:
        if window < 1:
            raise ValueError(f"stream window must be >= 1, got {window}")
        self.key, self.credit_key = key, keys.credit(key)
        self.window, self.timeout_s, self.liveness, self.who = window, timeout_s, liveness, who
        self.conn = Connection(r)
        self._credits = window
        # Replies not read yet, in order: True for an LPOP of credits, False for the rest.
        self._pending: deque[bool] = deque()

    def send(self, fields: dict[str, Field], what: str) -> None:
        if self._credits == 0:
            self._wait_for_credit(what)
        self._credits -= 1
        # The expiry goes with each entry: a stream its receiver already dropped (a run that
        # failed) and a late entry recreated does not outlive the run, in any Redis.
        cmds = [_xadd(self.key, fields), ("EXPIRE", self.key, keys.RUN_TTL_S)]
        if self._credits <= self.window // 2 and True not in self._pending:  # none asked for yet
            cmds.append(("LPOP", self.credit_key, self.window))
        self.conn.send(*cmds)
        # What is owed stays bounded without a flush here: credits are counted only from an LPOP's reply,
        # and a read of one reads every reply before it (a BLPOP for credit comes after a full flush),
        # so at most ``window`` sends are unread (two replies each) plus the one LPOP in flight.
        self._pending.extend(c[0] == "LPOP" for c in cmds)

    def flush(self, wait: bool = True) -> None:
        """Read the replies of the commands in flight (``wait=False``: only those already here);
        raises the error Redis answered, if any."""
        while self._pending and (wait or self.conn.has_reply()):
            credits = self._pending.popleft()
            try:
                reply = self.conn.read()
            except (redis.ConnectionError, redis.TimeoutError):
                self._pending.clear()  # the connection is gone, and the replies with it
                raise
            if credits:
                self._credits += len(reply or [])

    def _wait_for_credit(self, what: str) -> None:
        self.flush()
        deadline = time.monotonic() + self.timeout_s
        while self._credits == 0:
            left = deadline - time.monotonic()
            self.conn.send(("BLPOP", self.credit_key, f"{max(0.01, min(POLL_S, left)):.3f}"))
            if self.conn.read():
                self.conn.send(("LPOP", self.credit_key, self.window))
                self._credits += 1 + len(self.conn.read() or [])
                return
            self.liveness.check()
            if left <= 0:
                raise StageTimeout(
                    f"{self.who} waited {self.timeout_s:.0f}s to send {what} on {self.key}: "
                    f"its receiver consumed none of the last {self.window} entries"
                )

    def close(self, drop: bool = False) -> None:
        """``drop``: the run ended before its receiver took everything (a stop, a failure). The
        stream and its credits go too: the receiver may have dropped them already, and an entry
        sent after that would otherwise stay for ``RUN_TTL_S`` in a Redis no run sweeps."""
        try:
            if self.conn.is_connected:
                self.flush()
                if drop:
                    self.conn.send(("DEL", self.key, self.credit_key))
                    self.conn.read()
        finally:
            self.conn.disconnect()


class Receiver:
    """Reads a stream in order, one read ahead: as soon as an entry is handed out, the read
    of the next one is on its way (with the acknowledgement of this one), so the entry
    travels into this process's socket while the stage computes."""

    def __init__(self, r: redis.Redis, key: str, timeout_s: float, liveness: RunLiveness, who: str) -> None:
        self.r, self.key, self.credit_key = r, key, keys.credit(key)
        self.timeout_s, self.liveness, self.who = timeout_s, liveness, who
        self.conn = Connection(r)
        self._last = b"0-0"
        self._unacked: bytes | None = None
        self._replies = 0  # replies of the request in flight; its last is the XREAD's

    def recv(self, what: str, on_wait: Callable[[], None] | None = None) -> tuple[bytes, dict[bytes, bytes]]:
        """Next entry ``(id, fields)``. ``on_wait`` runs every ``POLL_S`` while none has come (the stage
        reads its sends' replies there: one Redis refused may be why nothing comes)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if not self._replies:
                self._request(deadline - time.monotonic())
            reply = self._read()
            if reply:
                ((_, ((entry_id, flat),)),) = reply  # one stream, one entry: [[key, [[id, fields]]]]
                self._last = self._unacked = entry_id
                self._request(POLL_S)
                return entry_id, dict(zip(flat[::2], flat[1::2], strict=True))
            self.liveness.check()
            if on_wait is not None:
                on_wait()
            if deadline - time.monotonic() <= 0:
                raise StageTimeout(f"{self.who} waited {self.timeout_s:.0f}s for {what} on {self.key}")

    def _request(self, wait_s: float) -> None:
        """Acknowledge the entry handed out last (delete it, hand its sender a credit) and ask
        for the next, blocking at most ``wait_s`` (cut to ``POLL_S``) in Redis."""
        cmds: list[tuple] = []
        if self._unacked is not None:
            cmds += [("XDEL", self.key, self._unacked), ("RPUSH", self.credit_key, 1)]
            self._unacked = None
        block_ms = max(1, int(min(POLL_S, wait_s) * 1000))
        cmds.append(("XREAD", "COUNT", 1, "BLOCK", block_ms, "STREAMS", self.key, self._last))
        self.conn.send(*cmds)
        self._replies = len(cmds)

    def _read(self) -> list | None:
        reply = None
        while self._replies:
            self._replies -= 1
            try:
                reply = self.conn.read()
            except (redis.ConnectionError, redis.TimeoutError):
                self._replies = 0
                raise
        return reply

    def close(self) -> None:
        """Drop the (now consumed) stream and its credits; a read still in flight ends with the connection."""
        self.conn.disconnect()
        self.r.delete(self.key, self.credit_key)
