"""What a machine keeps to find and enter its cluster: ``$ARCEUS_HOME/cluster.json``, readable by
its owner only (no torch).

``token`` is the cluster token ``arceus up`` made here once (kept across restarts); it is sent
only to this machine's own API (a loopback URL). ``joined`` maps each API URL that
``arceus worker --join URL --token T`` entered to its token, and ``api_url`` is the last one, so
the next start needs neither; the CLI sends each API its own token, never another's.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["ensure_token", "join_target", "joined", "load", "save", "token_for"]

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


def joined(home: Path, api_url: str, token: str | None) -> None:
    """Keep ``token`` for ``api_url``, and that URL as the one to join by default."""
    url = api_url.rstrip("/")
    tokens = {**load(home).get("joined", {}), **({url: token} if token else {})}
    save(home, api_url=url, joined=tokens)


def token_for(home: Path, api_url: str) -> str | None:
    """The token this machine keeps for the API at ``api_url``: the one it joined with, else, for
    its own API (a loopback URL), the one ``arceus up`` made here."""
    data, url = load(home), api_url.rstrip("/")
    if url in data.get("joined", {}):
        return data["joined"][url]
    return data.get("token") if urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1") else None


def join_target(
    home: Path, default_url: str, url: str | None = None, token: str | None = None
) -> tuple[str, str | None]:
    """Where ``arceus worker`` and ``arceus doctor`` go: ``url``, else the API this machine joined
    last, else ``default_url``; with ``token``, else the one kept for that API."""
    target = (url or load(home).get("api_url") or default_url).rstrip("/")
    return target, token or token_for(home, target)
