"""The API under load, on loopback: latency of GET /api/jobs with many jobs and clients, and what
half-open connections hold.

1. ``--jobs`` jobs are created; ``--clients`` threads then GET /api/jobs (the first page, 50
   jobs, as a client that does not ask for more gets) ``--requests`` times in all; p50/p99.
   The same with ``?limit=500`` for the cost of a large page.
2. ``--half-open`` sockets connect and send half a request line, and stay silent. While they are
   open, a normal GET /api/health is timed; then we count, every few seconds, how many of them
   the server still holds open (it closes a silent connection after its channel timeout).
3. ``--burst`` concurrent GET /api/workers (the request that used to wedge every API thread),
   then a POST that must still be served.
4. What the live side costs: a Prometheus scrape of GET /metrics with the ``--jobs`` jobs
   (median of 20), and GET /api/health while as many job feeds (SSE) are open as the API allows.

    python -m bench.api_load [--jobs 1000] [--clients 20] [--requests 2000] [--half-open 500]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from api.events import MAX_FEEDS
from arceus.launch.control_plane import LocalCluster
from arceus.launch.procs import free_port
from arceus.launch.redis_server import EmbeddedRedis
from arceus.settings import Settings

JOB = {"model_config": {"layer_sizes": [784, 32, 10]}}


def _latencies(client, path: str, clients: int, requests: int) -> list[float]:
    def one(_: int) -> float:
        t0 = time.perf_counter()
        status, _reply = client.request("GET", path)
        assert status == 200, status
        return time.perf_counter() - t0

    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3


def _held(sockets: list[socket.socket]) -> int:
    """How many of ``sockets`` the server has not closed (a closed one reads EOF)."""
    open_ = 0
    for s in sockets:
        s.setblocking(False)
        try:
            open_ += s.recv(1) != b""
        except BlockingIOError:
            open_ += 1
        except OSError:
            pass
    return open_


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--half-open", type=int, default=500)
    p.add_argument("--burst", type=int, default=50)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="arceus-bench-api-"))
    with EmbeddedRedis() as server:
        settings = Settings.from_env(redis_url=server.url, home=tmp / "home", data_dir=tmp / "data")
        with LocalCluster(settings, port=free_port(), logs=tmp) as cluster:
            client = cluster.client()
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: client.post("/api/jobs", JOB), range(args.jobs)))
            print(f"{args.jobs} jobs; {args.clients} clients; {args.requests} requests per figure (ms)")
            for path in ("/api/jobs", "/api/jobs?limit=500"):
                lat = _latencies(client, path, args.clients, args.requests)
                print(f"  GET {path:<22} p50 {_pct(lat, 0.5):7.1f}  p99 {_pct(lat, 0.99):7.1f}  "
                      f"({args.requests / sum(lat) * args.clients:,.0f} requests/s)")  # fmt: skip

            sockets = []
            for _ in range(args.half_open):
                s = socket.create_connection(("127.0.0.1", cluster.port), timeout=5)
                s.sendall(b"GET /api/jobs HTTP/1.1\r\nHost: x\r\n")  # never finished
                sockets.append(s)
            t0 = time.perf_counter()
            client.get("/api/health")
            health_ms = (time.perf_counter() - t0) * 1e3
            print(f"{args.half_open} half-open connections: GET /api/health while they are open took "
                  f"{health_ms:.1f} ms")  # fmt: skip
            start = time.monotonic()
            while True:
                held = _held(sockets)
                print(f"  after {time.monotonic() - start:4.0f} s the server holds {held} of them open")
                if held == 0 or time.monotonic() - start > 90:
                    break
                time.sleep(10)
            for s in sockets:
                s.close()

            with ThreadPoolExecutor(args.burst) as pool:
                statuses = list(pool.map(lambda _: client.request("GET", "/api/workers")[0], range(args.burst)))
            t0 = time.perf_counter()
            status, _reply = client.request("POST", "/api/jobs", JOB)
            print(f"{args.burst} concurrent GET /api/workers: {statuses.count(200)} answered 200; a POST /api/jobs "
                  f"after them: {status} in {(time.perf_counter() - t0) * 1e3:.1f} ms")  # fmt: skip

            scrapes = []
            for _ in range(20):
                t0 = time.perf_counter()
                with urllib.request.urlopen(f"{cluster.api_url}/metrics", timeout=60) as resp:
                    size = len(resp.read())
                scrapes.append(time.perf_counter() - t0)
            print(f"GET /metrics with {args.jobs + 1} jobs: p50 {_pct(scrapes, 0.5):.1f} ms ({size:,} bytes)")
            job_id = client.post("/api/jobs", JOB)["job_id"]
            feeds = [urllib.request.urlopen(f"{cluster.api_url}/api/jobs/{job_id}/events", timeout=60)
                     for _ in range(MAX_FEEDS)]  # fmt: skip
            lat = _latencies(client, "/api/health", 4, 200)
            print(f"{MAX_FEEDS} open feeds (the most allowed): GET /api/health p50 {_pct(lat, 0.5):.1f} ms, "
                  f"p99 {_pct(lat, 0.99):.1f} ms")  # fmt: skip
            for f in feeds:
                f.close()


if __name__ == "__main__":
    main()
