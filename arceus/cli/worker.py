"""``arceus worker``: join a cluster as a device (once), then serve its Celery queue for any job.

``arceus worker --join http://HOST:4000 --token T`` asks the API (with the token) for the
cluster's Redis, registers this machine in the device pool under a stable name (its host name
by default: a worker that comes back takes its device, id and queue back), and runs
``celery -A workers worker -Q device-<id>``, which holds the device's lease while it serves.
A stopped worker gives its device's lease up; the device stays registered for its return.
The URL and token are kept in ``$ARCEUS_HOME/cluster.json`` (0600) for the next start; a
``--token`` given is dropped from the command line at once (the command runs again without it),
so it is not in ``ps`` for as long as the worker serves. SIGTERM and Ctrl-C both stop the
Celery worker (a stage it was running is handed to a recovery).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import redis

from .. import __version__
from ..codeid import SAME_CODE, code_id
from ..control import clusterfile
from ..control.client import ApiClient
from ..control.devices import BEAT_S, LEASE_S
from ..errors import ApiError
from ..launch.procs import child_environment, parent_death_hook
from ..launch.redis_server import EmbeddedRedis, redis_address
from ..settings import Settings

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="join the cluster as a device and serve any of its jobs")
    w.add_argument("--join", "--api-url", dest="api_url",
                   help="the cluster's API (default: the one joined last, else ARCEUS_API_URL)")  # fmt: skip
    w.add_argument("--token", help="the cluster token arceus up printed (default: ARCEUS_TOKEN, else the one kept)")
    w.add_argument("--name", help="device name, unique in the cluster (default: this machine's host name)")
    w.add_argument("--device", help="torch device (default: ARCEUS_DEVICE, else mps > cuda > cpu)")
    w.add_argument("--job-id", help="also register the device for this job (the original flow)")
    w.add_argument("--data-redis", default="auto", metavar="auto|central|embedded|URL",
                   help="where the streams into this device's stages live: embedded, a Redis this worker starts "
                        "beside it (each payload then crosses the network once); central, the cluster's; or a "
                        "redis:// URL (better given as ARCEUS_DATA_REDIS_URL, off the command line). auto "
                        "(default): embedded when the cluster's Redis is on another machine")  # fmt: skip
    w.add_argument("--data-bind", metavar="ADDR",
                   help="the address the embedded data Redis listens on (default: the one this machine reaches "
                        "the cluster's Redis from)")  # fmt: skip
    w.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env(device=args.device)
    url, token = clusterfile.join_target(settings.home, settings.api_url, args.api_url, args.token or settings.token)
    client = ApiClient(url, timeout_s=30, token=token)
    joined = _join(client)
    redis_url = joined["redis_url"]
    if joined.get("code") not in (None, code_id()):  # an API from before code ids says none: nothing to compare
        raise ApiError(
            f"this machine runs Arceus {__version__} (code {code_id()}), and the cluster's API at {url} runs "
            f"code {joined['code']}: {SAME_CODE}. Install the API's here and start the worker again, or, if the "
            "API is the one behind, update it and restart it"
        )
    try:
        redis.Redis.from_url(redis_url, socket_connect_timeout=5).ping()
    except redis.RedisError as e:
        raise ApiError(f"the cluster's Redis at {redis_address(redis_url)} does not answer from this machine ({e}): "
                       "is its port reachable (firewall)?") from None  # fmt: skip
    clusterfile.joined(settings.home, url, token)
    if args.token:  # kept now: run on without it in our argv, where `ps` would show it for as long as we serve
        argv = _without_token(sys.argv[1:])
        os.execv(sys.executable, [sys.executable, "-m", "arceus.cli", *argv, "--join", url])

    from ..engine.device import describe_machine  # noqa: PLC0415 - imports torch

    # Its speed and free memory are measured by the Celery worker, with the threads it trains with.
    info = {k: v for k, v in describe_machine(settings.device, measure=False).items() if v is not None}
    info["name"] = args.name or info["host"]
    data = _data_redis(args, redis_url)  # before registering: a port that cannot be had fails first
    try:
        return _serve(args, client, url, redis_url, info, data)
    finally:
        if isinstance(data, EmbeddedRedis):
            data.stop()


def _serve(
    args: argparse.Namespace, client: ApiClient, url: str, redis_url: str, info: dict, data: EmbeddedRedis | str | None
) -> int:
    """Register the device and run its Celery worker until it stops (SIGTERM, Ctrl-C)."""
    reply = _register(client, info, args.job_id)
    device_id, queue = reply["device_id"], reply["queue"]
    print(f"device {device_id} ({info['name']}, {info['torch_device']}) serves queue {queue} of {url}", flush=True)
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", f"{queue}@%h",
           "--loglevel", "INFO"]  # fmt: skip
    # The Redis URL (with its password) and our pid reach the worker through its environment only.
    data_url = (data.url_for(_reachable_host(data.bind, redis_url), as_worker=True)
                if isinstance(data, EmbeddedRedis) else data)  # fmt: skip
    where = f"its own Redis at {redis_address(data_url)}" if data_url else "the cluster's"
    print(f"streams into device {device_id}: {where}", flush=True)
    env = child_environment(
        Settings.from_env(
            device=args.device, redis_url=redis_url, parent_pid=os.getpid(), data_redis_url=data_url or ""
        )
    )  # fmt: skip  ("": none)
    proc = subprocess.Popen(cmd, env=env, preexec_fn=parent_death_hook())
    stopping = []

    def _stop(signum, _frame):  # SIGTERM as Ctrl-C: the Celery worker shuts down warm, giving its lease up
        stopping.append(signum)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, _stop)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                _stop(signal.SIGINT, None)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The Celery worker gave the lease up as it stopped: planning skips the device from now on. It
    # stays registered, so this name takes the same id (and queue) back on the next start.
    print(f"device {device_id} stopped serving; `arceus worker` with the name {info['name']!r} takes it back "
          f"(DELETE /api/devices/{device_id} removes it)", flush=True)  # fmt: skip
    return 0 if stopping else code


def _data_redis(args: argparse.Namespace, redis_url: str) -> EmbeddedRedis | str | None:
    """The Redis for the streams into this device: an embedded one started here (password-protected,
    bound to ``--data-bind``), a URL given, or None (the cluster's)."""
    choice = args.data_redis
    if choice == "auto" and os.environ.get("ARCEUS_DATA_REDIS_URL"):  # a password is better kept off argv
        choice = os.environ["ARCEUS_DATA_REDIS_URL"]
    cluster_host = urlsplit(redis_url).hostname or "127.0.0.1"
    if choice == "auto":  # one machine: nothing crosses a network, one Redis serves best
        choice = "central" if _is_loopback(cluster_host) else "embedded"
    if choice == "central":
        return None
    if choice != "embedded":
        if not choice.startswith(("redis://", "rediss://")):
            raise ApiError(f"--data-redis must be auto, central, embedded or a redis:// URL, got {choice!r}")
        try:
            redis.Redis.from_url(choice, socket_connect_timeout=5).ping()
        except redis.RedisError as e:
            raise ApiError(f"the data Redis {redis_address(choice)} does not answer: {e}") from None
        return choice
    bind = args.data_bind or _source_address(cluster_host)
    server = EmbeddedRedis(bind=bind, password=secrets.token_hex(16))
    # The stages of other machines get a Redis user that can do what stages do, not the admin password.
    server.worker_password = secrets.token_hex(16)
    return server.start()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def _source_address(host: str) -> str:
    """The address of this machine that packets to ``host`` leave from (a UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((socket.gethostbyname(host), 9))
            return s.getsockname()[0]
    except OSError as e:
        raise ApiError(f"cannot tell which address of this machine reaches {host} ({e}): give --data-bind ADDR, "
                       "or --data-redis central") from None  # fmt: skip


def _reachable_host(bind: str, redis_url: str) -> str:
    """How the other machines reach a server bound to ``bind``: that address, or for a wildcard the
    one we reach the cluster's Redis from."""
    if bind in ("0.0.0.0", "::", ""):
        return _source_address(urlsplit(redis_url).hostname or "127.0.0.1")
    return bind


def _without_token(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--token":
            skip = True
        elif not arg.startswith("--token="):
            out.append(arg)
    return out


def _join(client: ApiClient, wait_s: float = 120.0) -> dict:
    """The cluster's Redis URL and the API's code id, from its API (a 401 names a wrong token). An
    API that is not up yet (started beside us by honcho or compose) is waited for."""
    deadline, said = time.monotonic() + wait_s, False
    while True:
        try:
            return client.get("/api/cluster/join")
        except ApiError as e:
            if e.status is not None and e.status != 503 or time.monotonic() > deadline:
                raise
            if not said:
                print(f"waiting for the API at {client.base} ({e})", file=sys.stderr, flush=True)
                said = True
            time.sleep(1.0)


def _register(client: ApiClient, info: dict, job_id: str | None) -> dict:
    """Register, waiting out the lease of a device of the same name whose worker was killed: its
    heartbeat does not move any more. A name whose heartbeat moves is held by a live worker: an
    error at once (well, after a heartbeat or two)."""
    body = {**info, **({"job_id": job_id} if job_id else {})}
    deadline, last_beat = time.monotonic() + LEASE_S + 2 * BEAT_S, None
    while True:
        status, reply = client.request("POST", "/api/devices/register", body)
        if status < 300:
            return reply
        holder = _holder(client, reply["message"]) if status == 409 else None
        failed = ApiError(f"POST /api/devices/register: {status} {reply['message']}", status)
        if holder is None or time.monotonic() > deadline:
            raise failed
        if holder.get("alive"):
            beat = round(time.time() - holder["last_seen_s"])
            if last_beat is not None and beat > last_beat + 1:  # it beat again: its worker is alive
                raise failed
            last_beat = beat if last_beat is None else last_beat
        time.sleep(BEAT_S)


def _holder(client: ApiClient, message: str) -> dict | None:
    """The device a 409 says holds our name (``... (device <id>, ...``), if it says so."""
    marker = "(device "
    if marker not in message:
        return None
    device_id = message.split(marker, 1)[1].split(",", 1)[0]
    status, reply = client.request("GET", f"/api/devices/{device_id}")
    return reply if status == 200 else None
