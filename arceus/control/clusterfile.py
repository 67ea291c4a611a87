"""What a machine keeps to find and enter its cluster: ``$ARCEUS_HOME/cluster.json``, readable by
its owner only (no torch).

``arceus up`` creates the cluster token there once (and keeps it across restarts);
``arceus worker --join URL --token T`` keeps the URL and token there, so the next start needs
neither; the CLI's API calls send that token. Nothing here is ever printed in a URL.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

__all__ = ["ensure_token", "load", "save", "token_for"]

NAME = "cluster.json"


def load(home: Path) -> dict:
    try:
        data = json.loads((Path(home) / NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save(home: Path, **fields: object) -> dict:
    """Merge ``fields`` into the file, written whole (temp file, 0600, rename)."""
    folder = Path(home)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {**load(home), **fields}
    tmp = folder / f".{NAME}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, folder / NAME)
    return data


def ensure_token(home: Path) -> str:
    """The cluster token kept under ``home``, made the first time."""
    data = load(home)
    if not data.get("token"):
        data = save(home, token=secrets.token_urlsafe(24))
    return data["token"]


def token_for(home: Path, api_url: str) -> str | None:
    """The token this machine keeps for the API at ``api_url``: the one ``arceus up`` made here (its
    own API), or the one ``arceus worker --join`` was given for that URL."""
    data = load(home)
    return data.get("token") if data.get("api_url") in (None, api_url.rstrip("/")) else None
