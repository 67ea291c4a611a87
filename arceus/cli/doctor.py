"""``arceus doctor``: what this machine needs to serve (or run) a cluster, checked one by one.

The API and its Redis, the token, torch and its device, the data directory, free memory and
the clock. Each line says ok, warn or FAIL and what to do; the exit code is 1 on any FAIL.
"""

from __future__ import annotations

import argparse
import email.utils
import os
import shutil
import time
import urllib.error
import urllib.request

import redis

from ..codeid import SAME_CODE, code_id
from ..control import clusterfile
from ..control.client import ApiClient
from ..errors import ApiError
from ..launch.redis_server import redis_address
from ..settings import Settings

__all__ = ["add_commands"]

SKEW_WARN_S = 2.0


def add_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("doctor", help="check this machine: API, Redis, token, torch device, data, memory, clock")
    d.add_argument("--join", "--api-url", dest="api_url", help="the cluster's API (default: the one joined last)")
    d.add_argument("--token", help="the cluster token (default: ARCEUS_TOKEN, else the one kept)")
    d.add_argument("--device", help="torch device to check (default: ARCEUS_DEVICE, else mps > cuda > cpu)")
    d.set_defaults(func=cmd_doctor)


class _Report:
    def __init__(self) -> None:
        self.failed = 0

    def line(self, level: str, what: str, detail: str) -> None:
        self.failed += level == "FAIL"
        print(f"{level:<4}  {what:<12} {detail}", flush=True)


def cmd_doctor(args: argparse.Namespace) -> int:
    settings = Settings.from_env(device=args.device)
    url, token = clusterfile.join_target(settings.home, settings.api_url, args.api_url, args.token or settings.token)
    out = _Report()
    redis_url = _api(out, url, token)
    if redis_url is not None:
        _redis(out, redis_url)
    _torch(out, settings.device)
    _data(out, settings)
    _memory(out)
    return 1 if out.failed else 0


def _api(out: _Report, url: str, token: str | None) -> str | None:
    """Reachability and clock of the API, then the token; the Redis URL it hands workers."""
    try:
        t0 = time.time()
        with urllib.request.urlopen(url + "/api/health", timeout=10) as resp:
            date = resp.headers.get("Date")
            health = resp.status
        t1 = time.time()
    except urllib.error.HTTPError as e:
        out.line("FAIL", "api", f"{url} answers {e.code} to /api/health (its Redis is down?)")
        return None
    except (urllib.error.URLError, OSError) as e:
        out.line("FAIL", "api", f"cannot reach {url} ({getattr(e, 'reason', e)}): is `arceus up` running there?")
        return None
    out.line("ok", "api", f"{url} answers ({health}, {(t1 - t0) * 1e3:.0f} ms)")
    if date:
        skew = email.utils.parsedate_to_datetime(date).timestamp() - (t0 + t1) / 2
        level = "warn" if abs(skew) > SKEW_WARN_S else "ok"
        out.line(level, "clock", f"{skew:+.1f} s from the API's (HTTP Date, 1 s resolution)"
                 + ("; sync the clocks (NTP)" if level == "warn" else ""))  # fmt: skip
    try:
        joined = ApiClient(url, timeout_s=10, token=token).get("/api/cluster/join")
    except ApiError as e:
        hint = " (pass --token, or set ARCEUS_TOKEN)" if e.status == 401 else ""
        out.line("FAIL", "token", f"{e}{hint}")
        return None
    out.line("ok", "token", "accepted" if token else "none needed (the API runs open on its loopback)")
    theirs = joined.get("code")
    if theirs is None:
        out.line("warn", "code", f"the API runs an Arceus from before code ids; this machine runs code {code_id()}")
    elif theirs != code_id():
        out.line("FAIL", "code", f"this machine runs Arceus code {code_id()}, the API code {theirs}: {SAME_CODE}")
    else:
        out.line("ok", "code", f"{code_id()}, the same as the API's")
    return joined["redis_url"]


def _redis(out: _Report, url: str) -> None:
    host = redis_address(url)
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
        t0 = time.perf_counter()
        client.ping()
        out.line("ok", "redis", f"{host} answers ({(time.perf_counter() - t0) * 1e3:.1f} ms)")
    except redis.RedisError as e:
        out.line("FAIL", "redis", f"{host} does not answer from here ({e}): is its port reachable (firewall)?")


def _torch(out: _Report, device: str | None) -> None:
    try:
        import torch  # noqa: PLC0415

        from ..engine.device import pick_device  # noqa: PLC0415
    except ImportError as e:
        out.line("FAIL", "torch", f"cannot import torch: {e}")
        return
    try:
        dev = pick_device(device)
        a = torch.randn(256, 256, device=dev)
        t0 = time.perf_counter()
        for _ in range(10):
            b = a @ a
        float(b.sum())  # waits for the device
        gflops = 10 * 2 * 256**3 / (time.perf_counter() - t0) / 1e9
        out.line("ok", "torch", f"{torch.__version__} on {dev} ({gflops:.1f} GFLOP/s on a 256x256 matmul)")
    except Exception as e:  # a broken driver, an unknown device name
        out.line("FAIL", "torch", f"{type(e).__name__}: {e}")


def _data(out: _Report, settings: Settings) -> None:
    for what, folder in (("data dir", settings.data_dir), ("home", settings.home)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".doctor-{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            out.line("FAIL", what, f"{folder} is not writable: {e}")
            continue
        free = shutil.disk_usage(folder).free / 2**30
        out.line("ok" if free > 1 else "warn", what, f"{folder} ({free:.1f} GiB free)")
    mnist = settings.data_dir / "MNIST" / "raw"
    if mnist.is_dir() and any(mnist.iterdir()):
        out.line("ok", "MNIST", f"found under {mnist}")
    else:
        how = "downloaded on first use" if settings.download else "not downloaded (ARCEUS_DOWNLOAD=0)"
        out.line("warn", "MNIST", f"not under {mnist}: {how}; the digits stand-in needs nothing")


def _memory(out: _Report) -> None:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        out.line("warn", "memory", "unknown")
        return
    try:  # the machine's available memory, as a CPU worker reports it (Linux's MemAvailable, macOS's free + inactive)
        import torch  # noqa: PLC0415

        from ..engine.device import free_memory_gb  # noqa: PLC0415

        free = free_memory_gb(torch.device("cpu"))
    except ImportError:  # said by the torch line
        free = None
    if free is None:
        out.line("ok", "memory", f"{total:.1f} GiB")
    else:
        out.line("ok" if free > 1 else "warn", "memory", f"{free:.1f} of {total:.1f} GiB free")
