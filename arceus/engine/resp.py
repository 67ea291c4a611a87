"""The stage links' own Redis connection: RESP2 framing on a socket, for the hot path only.

A link's traffic is a handful of commands (XADD, EXPIRE, XREAD, XDEL, RPUSH, BLPOP, LPOP) with
replies of a known shape. redis-py's general reader and writer cost more per message than the
hop itself needs, so this connection frames them itself: commands go out with one ``sendmsg``
(a payload is not joined into a copy, except over TLS, which has no ``sendmsg``), and a large bulk
string is received straight into a buffer of its own, not copied out of a read buffer.
``python -m bench.redis_hop --links`` measures a hop three ways (a direct socket, redis-py, these
links): see docs/benchmarks.md.

redis-py still opens the connection (TCP, Unix socket or TLS, AUTH, SELECT: whatever the
client's URL says), so this module only speaks the protocol. Errors keep redis-py's types:
an error reply raises ``redis.ResponseError`` (or redis-py's subclass for it: LOADING is a
``BusyLoadingError``, ...), a lost connection ``redis.ConnectionError``, a socket timeout
``redis.TimeoutError``, a reply that is not RESP ``redis.exceptions.InvalidResponse``. A
connection is opened once: after a failure it stays closed.
"""

from __future__ import annotations

import select
import socket
import ssl

import redis

__all__ = ["Connection"]

Buffer = bytes | bytearray | memoryview
# A tuple of buffers is one argument in pieces (a payload's header and body, not joined).
Arg = Buffer | tuple[Buffer, ...] | str | int | float
# A bulk string this long is received into a buffer of its own (no copy out of the read
# buffer); shorter ones are sliced out of it.
_OWN_BUFFER = 16 * 1024
_READ_SIZE = 64 * 1024
# A reply's header line is short: "$<length>", "*<count>", ":<int>" or an error message.
# One that never ends is not Redis: fail instead of buffering it without bound.
_MAX_LINE = 64 * 1024


class Connection:
    """One RESP2 connection to the Redis behind a client, opened on first use. Commands are
    written without waiting (``send``); replies are read in order, one ``read`` each."""

    def __init__(self, r: redis.Redis) -> None:
        pool = r.connection_pool
        # RESP2, which this module parses, whatever redis-py would pick (8.x picks RESP3).
        kwargs = {**pool.connection_kwargs, "health_check_interval": 0, "protocol": 2}
        if "maint_notifications_config" in kwargs:  # redis-py >= 6: push notifications, RESP3 only
            kwargs["maint_notifications_config"] = None
        self._opener = pool.connection_class(**kwargs)
        self._sock: socket.socket | None = None
        # Opened once: a link that lost its connection has lost the replies it was owed too, so it
        # fails instead of going on, out of step, on a new one.
        self._closed = False
        self._buf = bytearray(_READ_SIZE)
        self._view = memoryview(self._buf)
        self._start = self._end = 0  # unread bytes are _buf[_start:_end]

    @property
    def is_connected(self) -> bool:
        return self._sock is not None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self._closed:
                raise redis.ConnectionError("the link's connection to Redis was closed")
            self._closed = True
            self._opener.connect()  # raises redis.ConnectionError / TimeoutError
            sock = getattr(self._opener, "_sock", None)
            if not isinstance(sock, socket.socket):
                self._opener.disconnect()
                raise redis.RedisError(
                    f"redis-py {redis.__version__} opened no plain socket to take over (Connection._sock)"
                )
            self._sock, self._start, self._end = sock, 0, 0
        return self._sock

    def disconnect(self) -> None:
        self._sock, self._closed = None, True
        self._start = self._end = 0
        self._opener.disconnect()

    # ----------------------------------------------------------------- writing
    def send(self, *commands: tuple[Arg, ...]) -> None:
        """Write ``commands`` (each a tuple of arguments) in one go; their replies come later."""
        parts = _pack(commands)
        sock = self._socket()
        try:
            _send_all(sock, parts)
        except BaseException as e:  # part of a command may be out: this connection is done
            self.disconnect()
            if isinstance(e, TimeoutError):  # socket.timeout is TimeoutError
                raise redis.TimeoutError(f"Timeout writing to socket: {e}") from e
            if isinstance(e, OSError):
                raise redis.ConnectionError(f"Error writing to socket: {e}") from e
            raise

    # ----------------------------------------------------------------- reading
    def has_reply(self) -> bool:
        """Whether ``read`` will not wait for Redis to answer: a reply has (begun to) come in, or
        the connection is closed (``read`` raises)."""
        sock = self._sock
        if sock is None or self._end > self._start:
            return True
        if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted already, unseen by select
            return True
        return bool(select.select([sock], [], [], 0)[0])

    def read(self) -> object:
        """The next reply: bytes (bytearray for a large bulk string), int, None, or a list of
        these. An error reply raises (``redis.ResponseError``, or the subclass redis-py would) once
        the whole reply is consumed; anything else that goes wrong closes the connection."""
        if self._sock is None:
            raise redis.ConnectionError("read on a link connection that is not open")
        try:
            reply = self._reply()
        except BaseException as e:  # a reply half read: the next one would not line up
            self.disconnect()
            if isinstance(e, TimeoutError):
                raise redis.TimeoutError(f"Timeout reading from socket: {e}") from e
            if isinstance(e, OSError):
                raise redis.ConnectionError(f"Error reading from socket: {e}") from e
            if isinstance(e, ValueError):  # a length or an integer that is not one
                raise redis.exceptions.InvalidResponse(f"Protocol error: {e}") from e
            raise
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, list):
            error = next((x for x in _flat(reply) if isinstance(x, Exception)), None)
            if error is not None:
                raise error
        return reply

    def _reply(self) -> object:
        """One reply; an error reply is returned as its exception, so an array is read whole."""
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._bulk(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return bytes(rest)
        if kind == b"-":
            return _error(bytes(rest).decode(errors="replace"))
        raise redis.exceptions.InvalidResponse(f"not a RESP2 reply from Redis: {bytes(line[:40])!r}")

    def _line(self) -> bytes:
        while True:
            i = self._buf.find(b"\r\n", self._start, self._end)
            if i >= 0:
                line = bytes(self._buf[self._start : i])
                self._start = i + 2
                return line
            if self._end - self._start > _MAX_LINE:
                raise redis.exceptions.InvalidResponse(f"a reply line from Redis is over {_MAX_LINE} bytes")
            self._fill()

    def _bulk(self, n: int) -> bytes | bytearray:
        have = self._end - self._start
        if n < _OWN_BUFFER:
            while have < n + 2:
                self._fill()
                have = self._end - self._start
            end = self._start + n
            if self._buf[end : end + 2] != b"\r\n":
                raise redis.exceptions.InvalidResponse(f"a {n}-byte bulk string from Redis does not end with CRLF")
            out = bytes(self._buf[self._start : end])
            self._start = end + 2
            return out
        # Received straight into its own buffer, which the caller then owns.
        out = bytearray(n + 2)
        view = memoryview(out)
        got = min(have, n + 2)
        view[:got] = self._view[self._start : self._start + got]
        self._start += got
        sock = self._sock
        while got < n + 2:
            k = sock.recv_into(view[got:])
            if not k:
                raise OSError("connection closed by Redis")
            got += k
        del view
        if out[n:] != b"\r\n":
            raise redis.exceptions.InvalidResponse(f"a {n}-byte bulk string from Redis does not end with CRLF")
        del out[n:]
        return out

    def _fill(self) -> None:
        """Read more bytes into the buffer, moving what is unread to its front first."""
        if self._start == self._end:
            self._start = self._end = 0
        elif self._end == len(self._buf):
            unread = self._end - self._start
            if self._start:
                self._view[:unread] = self._view[self._start : self._end]
                self._start, self._end = 0, unread
            else:  # a line longer than the buffer: grow it (bounded by _MAX_LINE)
                self._view.release()
                self._buf.extend(bytes(len(self._buf)))
                self._view = memoryview(self._buf)
        k = self._sock.recv_into(self._view[self._end :])
        if not k:
            raise OSError("connection closed by Redis")
        self._end += k


# Error replies redis-py raises as more than a ResponseError; the links treat the connection
# errors among them (a server still loading its data, one with no room for a client) as a lost link.
_ERRORS: tuple[tuple[str, type[redis.RedisError]], ...] = (
    ("LOADING", redis.BusyLoadingError),
    ("NOAUTH", redis.AuthenticationError),
    ("WRONGPASS", redis.AuthenticationError),
    ("OOM", redis.OutOfMemoryError),
    ("READONLY", redis.ReadOnlyError),
    ("ERR max number of clients reached", redis.ConnectionError),
)


def _error(message: str) -> redis.RedisError:
    for prefix, kind in _ERRORS:
        if message.startswith(prefix):
            return kind(message)
    return redis.ResponseError(message.removeprefix("ERR "))


def _flat(reply: list) -> list:
    out = []
    for x in reply:
        out += _flat(x) if isinstance(x, list) else [x]
    return out


def _pack(commands: tuple[tuple[Arg, ...], ...]) -> list:
    """RESP2 frames of ``commands``: small pieces joined, a payload kept as its own part (not copied)."""
    parts: list[bytes | bytearray | memoryview] = []
    small = bytearray()
    for cmd in commands:
        small += b"*%d\r\n" % len(cmd)
        for arg in cmd:
            if isinstance(arg, tuple):  # one bulk string in pieces
                pieces = [memoryview(p).cast("B") for p in arg]
                small += b"$%d\r\n" % sum(len(p) for p in pieces)
                for piece in pieces:
                    if len(piece) >= _OWN_BUFFER:
                        parts += [small, piece]
                        small = bytearray()
                    else:
                        small += piece
                small += b"\r\n"
                continue
            if isinstance(arg, str):
                arg = arg.encode()
            elif isinstance(arg, bool):
                raise redis.DataError(f"a bool is not a Redis argument: {arg!r}")
            elif isinstance(arg, (int, float)):
                arg = repr(arg).encode()
            elif isinstance(arg, memoryview):
                arg = arg.cast("B")  # its length in bytes, whatever its items are
            small += b"$%d\r\n" % len(arg)
            if len(arg) >= _OWN_BUFFER:
                parts += [small, arg]
                small = bytearray(b"\r\n")
            else:
                small += arg
                small += b"\r\n"
    parts.append(small)
    return parts


def _send_all(sock: socket.socket, parts: list) -> None:
    if isinstance(sock, ssl.SSLSocket):  # no sendmsg over TLS
        sock.sendall(b"".join(parts))
        return
    views = [memoryview(p) for p in parts]
    i = 0
    while i < len(views):
        sent = sock.sendmsg(views[i:])
        while i < len(views) and sent >= len(views[i]):
            sent -= len(views[i])
            i += 1
        if sent:
            views[i] = views[i][sent:]
