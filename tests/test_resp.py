"""The links' own RESP2 connection (engine.resp), against a real Redis."""

import socket
import threading

import pytest
import redis

from arceus.engine.resp import Connection
from arceus.launch.redis_server import EmbeddedRedis


def test_replies_come_back_in_order_with_their_types(r):
    conn = Connection(r)
    big = bytes(range(256)) * 1024  # 256 KiB: received into a buffer of its own
    conn.send(("SET", "small", b"v\r\nx"), ("SET", "big", big), ("GET", "small"), ("GET", "big"),
              ("GET", "missing"), ("RPUSH", "l", 1, 2.5), ("LRANGE", "l", 0, -1), ("PING",))  # fmt: skip
    assert [conn.read() for _ in range(8)] == [b"OK", b"OK", b"v\r\nx", big, None, 2, [b"1", b"2.5"], b"PONG"]
    conn.disconnect()


def test_a_stream_entry_is_read_whole_at_every_size(r):
    conn = Connection(r)
    for size in (0, 1, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 3 << 20):
        payload = bytes([size % 251]) * size
        conn.send(("XADD", "s", "*", "h", b"{}", "x", payload), ("XREAD", "COUNT", 1, "STREAMS", "s", "0-0"),
                  ("DEL", "s"))  # fmt: skip
        entry_id = conn.read()
        ((key, ((got_id, fields),)),) = conn.read()
        assert (key, got_id, fields) == (b"s", entry_id, [b"h", b"{}", b"x", payload])
        assert conn.read() == 1
    conn.disconnect()


def test_an_argument_in_pieces_arrives_as_one_bulk_string(r):
    """A payload goes out as its header and body, not joined: Redis stores their concatenation."""
    conn = Connection(r)
    grid = memoryview(bytes(range(200)) * 100).cast("B", (100, 200))  # a 2-D view: sent as its bytes
    cases = [(b"", b""), (b"h" * 19, bytes(range(256)) * 512), (b"h" * 19, b"small"), (bytearray(b"x" * 20000), grid)]
    for head, body in cases:
        conn.send(("SET", "k", (head, body)), ("GET", "k"))
        assert conn.read() == b"OK" and conn.read() == bytes(head) + memoryview(body).tobytes()
    conn.disconnect()


def test_an_error_reply_raises_and_the_replies_after_it_still_line_up(r):
    conn = Connection(r)
    conn.send(("SET", "k", "v"), ("LPUSH", "k", "x"), ("GET", "k"))
    assert conn.read() == b"OK"
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        conn.read()
    assert conn.read() == b"v"
    conn.disconnect()


def test_it_opens_a_password_protected_redis_as_the_url_says():
    with EmbeddedRedis(password="s3cret") as server:
        conn = Connection(redis.Redis.from_url(server.url))
        conn.send(("PING",))
        assert conn.read() == b"PONG"
        conn.disconnect()
        wrong = Connection(redis.Redis.from_url(server.url.replace("s3cret", "nope")))
        with pytest.raises(redis.AuthenticationError):
            wrong.send(("PING",))


def _not_redis(reply: bytes) -> int:
    """A server that says OK to redis-py's handshake, then answers PING with ``reply`` and closes."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server:
            client, _ = server.accept()
            with client:
                while b"PING" not in (data := client.recv(4096)):
                    client.sendall(b"+OK\r\n" * data.count(b"*"))  # one "*<n>" a command
                client.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a RESP2 reply"),
        (b"$5\r\nhello!!", "does not end with CRLF|closed"),
        (b"$40000\r\n" + b"x" * 40000 + b"ab", "does not end with CRLF"),
        (b"+" + b"x" * 70000, "over 65536 bytes"),
        (b"*3\r\n:1\r\n", "closed"),
    ],
)
def test_a_peer_that_is_not_redis_fails_with_an_error_naming_it(reply, error):
    port = _not_redis(reply)
    conn = Connection(redis.Redis(host="127.0.0.1", port=port, socket_timeout=5))
    # A reply that is not RESP is redis-py's InvalidResponse (not a lost connection: no recovery mends it).
    with pytest.raises((redis.ConnectionError, redis.exceptions.InvalidResponse), match=error):
        conn.send(("PING",))
        conn.read()


def test_an_error_inside_an_array_is_raised_once_the_array_is_read_whole(r):
    conn = Connection(r)
    conn.send(("EVAL", "return {1, redis.error_reply('boom'), 3}", 0), ("PING",))
    with pytest.raises(redis.ResponseError, match="boom"):
        conn.read()
    assert conn.read() == b"PONG"  # still in step: the array's last element did not become this reply
    conn.disconnect()


def test_error_replies_keep_redis_pys_types(r):
    # A server still loading its data is a connection error to redis-py: the links then ask liveness.
    conn = Connection(r)
    conn.send(("EVAL", "return redis.error_reply('LOADING Redis is loading the dataset in memory')", 0), ("PING",))
    with pytest.raises(redis.BusyLoadingError):
        conn.read()
    assert conn.read() == b"PONG"
    conn.disconnect()


def test_a_killed_connection_fails_as_a_connection_error_and_stays_closed(r):
    conn = Connection(r)
    conn.send(("CLIENT", "ID"))
    r.client_kill_filter(_id=conn.read())
    with pytest.raises(redis.ConnectionError):
        conn.send(("PING",))
        conn.read()
    assert not conn.is_connected
    # Opening a new one would put the replies the link is owed out of step with its commands.
    with pytest.raises(redis.ConnectionError, match="was closed"):
        conn.send(("PING",))


def test_a_large_entry_goes_out_whole_through_a_socket_with_a_timeout(redis_url):
    # With a timeout the socket does not block: the kernel takes a large payload in pieces.
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    conn = Connection(client)
    payload = bytes(range(256)) * (16 << 10)  # 4 MiB
    conn.send(("SET", "big", payload), ("STRLEN", "big"), ("GET", "big"))
    assert [conn.read() for _ in range(3)] == [b"OK", len(payload), payload]
    conn.disconnect()
    client.close()
