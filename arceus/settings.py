"""Process-wide settings, read from the environment once at the edge and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

__all__ = ["Settings"]


def _default_data_dir() -> Path:
    return Path.home() / ".cache" / "arceus" / "data"


@dataclass(frozen=True)
class Settings:
    # None means "start an embedded redis-server"; any Redis >= 6.2 works otherwise.
    redis_url: str | None = None
    # Where torchvision datasets live: <data_dir>/MNIST/raw/train-images-idx3-ubyte, ...
    data_dir: Path = field(default_factory=_default_data_dir)
    # Try to download missing datasets. Off by default: a machine without internet
    # would otherwise wait on DNS/TCP timeouts before failing.
    download: bool = False
    # Seconds a stage waits for a neighbour's message before failing with StageTimeout.
    # Generous because a neighbour may still be loading torch or its dataset.
    recv_timeout_s: float = 120.0
    # Unconsumed entries allowed per stream; bounds Redis memory (see docs/wire.md).
    stream_window: int = 8
    # Largest tensor (in elements) a payload may declare; bounds what a decode allocates.
    max_payload_elements: int = 1 << 26
    # Seconds the API waits for every device's worker to confirm its shard.
    init_timeout_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        if env.get("ARCEUS_REDIS_URL"):
            values["redis_url"] = env["ARCEUS_REDIS_URL"]
        if env.get("ARCEUS_DATA_DIR"):
            values["data_dir"] = Path(env["ARCEUS_DATA_DIR"]).expanduser()
        if env.get("ARCEUS_DOWNLOAD"):
            values["download"] = env["ARCEUS_DOWNLOAD"].lower() in ("1", "true", "yes")
        if env.get("ARCEUS_RECV_TIMEOUT"):
            values["recv_timeout_s"] = float(env["ARCEUS_RECV_TIMEOUT"])
        if env.get("ARCEUS_INIT_TIMEOUT"):
            values["init_timeout_s"] = float(env["ARCEUS_INIT_TIMEOUT"])
        if env.get("ARCEUS_STREAM_WINDOW"):
            values["stream_window"] = int(env["ARCEUS_STREAM_WINDOW"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)
