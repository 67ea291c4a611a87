"""The whole control plane on this machine: Redis, the API, Celery workers, Flower.

``arceus up``, ``arceus demo`` and the control-plane tests use it (``launch.stages``
runs the engine alone). Every process it starts gets these settings through its
environment, logs to a file of its own, and is stopped when the block exits, also on
Ctrl-C; Redis and the workers also die with us if we are killed.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .. import keys
from ..control.client import ApiClient
from ..errors import ApiError
from ..settings import Settings
from .procs import child_environment, free_port, parent_death_hook, stop_processes
from .redis_server import EmbeddedRedis

__all__ = ["LocalCluster", "lan_address"]

log = logging.getLogger(__name__)


def lan_address() -> str:
    """This machine's name as other machines on the LAN would use it (from local config only)."""
    name = socket.gethostname()
    with contextlib.suppress(OSError):
        addr = socket.gethostbyname(name)
        if not addr.startswith("127."):
            return addr
    return name


class LocalCluster:
    def __init__(
        self,
        settings: Settings,
        host: str = "127.0.0.1",
        port: int = 4000,
        logs: Path | None = None,
        persist: bool = False,
    ) -> None:
        # persist: the embedded Redis keeps its data under settings.home (``arceus up``); else throwaway.
        self.settings, self.host, self.port, self.persist = settings, host, port, persist
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = logs or Path(tempfile.mkdtemp(prefix="arceus-logs-"))

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LocalCluster:
        try:
            if self.redis_url is None:
                lan = self.host != "127.0.0.1"
                if self.persist:
                    self.redis = EmbeddedRedis.persistent(self.settings.home, self.settings.redis_server, lan)
                else:
                    self.redis = EmbeddedRedis(
                        binary=self.settings.redis_server,
                        bind="0.0.0.0" if lan else "127.0.0.1",
                        password=secrets.token_hex(12) if lan else None,
                    )
                self.redis_url = self.redis.start().url
            self.start_api()
            return self
        except BaseException:
            self.stop()  # nothing half-started is left behind
            raise

    def child_env(self, **settings: object) -> dict[str, str]:
        """The environment of a process started here: our settings, with ``settings``' overrides."""
        overrides = {k: v for k, v in settings.items() if v is not None}
        return child_environment(replace(self.settings, redis_url=self.redis_url, **overrides))

    def api_env(self, **settings: object) -> dict[str, str]:
        """The API's environment: ours, and the Redis URL it hands to joining workers (their own
        Redis user, where the embedded Redis has one)."""
        worker_url = self.redis.worker_url if self.redis is not None else None
        return self.child_env(worker_redis_url=worker_url, **settings)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise ApiError(f"{name} is already running (pid {self.procs[name].pid}); stop it first")
        with open(self.logs / f"{name}.log", "ab") as log_file:  # the child keeps its own descriptor
            proc = subprocess.Popen(
                args, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=parent_death_hook(),
            )  # fmt: skip
        self.procs[name] = proc
        return proc

    def start_api(self, **settings: object) -> None:
        """``python -m api.server``; returns once it answers. ``settings`` override ours for it."""
        if self.port == 0:
            self.port = free_port()
        args = [sys.executable, "-m", "api.server", "--host", self.host, "--port", str(self.port)]
        self._spawn("api", args, self.api_env(**settings))
        client, deadline = self.client(), time.monotonic() + 60
        while True:
            try:
                client.get("/api/health")
                return
            except ApiError:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ApiError(f"the API did not start within 60s; see {self.logs / 'api.log'}") from None
                time.sleep(0.1)

    def _check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise ApiError(f"{name} exited with code {p.returncode}; its log is {self.logs / name}.log")

    def start_worker(self, device_id: int, threads: int | None = None) -> subprocess.Popen:
        """``celery -A workers worker -Q device-N`` for device ``device_id``."""
        queue = keys.queue_for(device_id)
        args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", f"{queue}@%h",
                "--loglevel", "INFO"]  # fmt: skip
        return self._spawn(f"worker-{device_id}", args, self.child_env(threads=threads))

    def start_flower(self, port: int = 5555, **env: str) -> str:
        """Flower on ``port``; ``env`` adds Flower's own variables (``FLOWER_BASIC_AUTH``, ...)."""
        args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", f"--address={self.host}"]
        self._spawn("flower", args, {**self.child_env(), **env})
        return f"http://127.0.0.1:{port}"

    def start_device(self, name: str, threads: int | None = None, *extra: str) -> subprocess.Popen:
        """``arceus worker --join <this API> --name <name>``: a device of the pool, for any job."""
        args = [sys.executable, "-m", "arceus.cli", "worker", "--join", self.api_url, "--name", name, *extra]
        return self._spawn(f"device-{name}", args, self.child_env(threads=threads))

    def wait_for_workers(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Until ``count`` workers hold their devices' leases (``GET /api/workers``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            workers = self.client().get("/api/workers")["workers"]
            if len(workers) >= count:
                return workers
            if time.monotonic() > deadline:
                raise ApiError(f"{len(workers)} of {count} workers came up within {timeout_s:.0f}s; logs: {self.logs}")
            time.sleep(0.2)

    def wait_live(self, device_ids: list[str], timeout_s: float = 60.0) -> None:
        """Until every device of ``device_ids`` is live (its worker holds its lease)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            live = {d["device_id"] for d in self.client().get("/api/devices")["devices"] if d["alive"]}
            if set(device_ids) <= live:
                return
            if time.monotonic() > deadline:
                missing = sorted(set(device_ids) - live)
                raise ApiError(f"devices {missing} had no live worker after {timeout_s:.0f}s; logs: {self.logs}")
            time.sleep(0.2)

    def client(self) -> ApiClient:
        return ApiClient(self.api_url, token=self.settings.token)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the process started as ``name`` (``api``, ``worker-N``) and wait for it."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop(self) -> None:
        # `arceus worker`s first, while the API is there to unregister them.
        stop_processes([p for name, p in self.procs.items() if name.startswith("device-")])
        stop_processes(self.procs.values())
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
