"""A whole Arceus cluster on this machine: Redis, the API, Celery workers, Flower.

``arceus up`` and ``arceus demo`` use it. Every process it starts is stopped when the
block exits, also on Ctrl-C; Redis and the workers also die with us if we are killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .client import ApiClient, ApiError
from .procs import free_port, parent_death_hook, stop_processes
from .redis_server import EmbeddedRedis
from .settings import Settings

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
    def __init__(self, settings: Settings, host: str = "127.0.0.1", port: int = 4000) -> None:
        self.settings, self.host, self.port = settings, host, port
        self.redis: EmbeddedRedis | None = None
        self.redis_url = settings.redis_url
        self.procs: list[subprocess.Popen] = []
        self._logs = Path(tempfile.mkdtemp(prefix="arceus-logs-"))

    @property
    def api_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> LocalCluster:
        try:
            return self._start()
        except BaseException:
            self.stop()  # nothing half-started is left behind
            raise

    def _start(self) -> LocalCluster:
        if self.redis_url is None:
            lan = self.host != "127.0.0.1"
            self.redis = EmbeddedRedis(
                bind="0.0.0.0" if lan else "127.0.0.1", password=secrets.token_hex(12) if lan else None
            ).start()
            self.redis_url = self.redis.url
        self._start_api()
        return self

    def worker_redis_url(self) -> str:
        """The Redis URL to give workers on other machines."""
        if self.redis is not None and self.host != "127.0.0.1":
            return self.redis.url_for(lan_address())
        return self.redis_url

    def _spawn(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log_file = open(self._logs / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        proc = subprocess.Popen(
            args, env={**os.environ, "ARCEUS_REDIS_URL": self.redis_url, **(env or {})},
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            preexec_fn=parent_death_hook(),
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def _start_api(self) -> None:
        if self.port == 0:
            self.port = free_port()
        self._spawn("api", [sys.executable, "-m", "api.server", "--host", self.host, "--port", str(self.port)])
        client, deadline = self.client(), time.monotonic() + 60
        while True:
            try:
                client.get("/api/openapi.json")
                return
            except ApiError:
                self._check_alive()
                if time.monotonic() > deadline:
                    raise ApiError(f"the API did not start within 60s; see {self._logs / 'api.log'}") from None
                time.sleep(0.1)

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.poll() is not None:
                name = " ".join(p.args[2:4]) if isinstance(p.args, list) else str(p.args)
                raise ApiError(f"{name} exited with code {p.returncode}; its log is in {self._logs}")

    def start_worker(self, device_id: int, threads: int | None = None) -> subprocess.Popen:
        args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", f"device-{device_id}",
                "-n", f"device-{device_id}@%h", "--loglevel", "INFO"]  # fmt: skip
        return self._spawn(f"worker-{device_id}", args, {"ARCEUS_THREADS": str(threads)} if threads else None)

    def start_flower(self, port: int = 5555) -> str:
        args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", f"--address={self.host}"]
        self._spawn("flower", args)
        return f"http://127.0.0.1:{port}"

    def wait_for_workers(self, count: int, timeout_s: float = 60.0) -> list[str]:
        """Until ``count`` workers answer the API's ping."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            workers = self.client().get("/api/workers")["workers"]
            if len(workers) >= count:
                return workers
            if time.monotonic() > deadline:
                raise ApiError(f"{len(workers)} of {count} workers came up within {timeout_s:.0f}s; logs: {self._logs}")
            time.sleep(0.2)

    def client(self) -> ApiClient:
        return ApiClient(self.api_url)

    def stop(self) -> None:
        stop_processes(self.procs)
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
