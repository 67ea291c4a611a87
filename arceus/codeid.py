"""Which Arceus a process runs: a digest of the code that the API and the workers share.

Every process of a cluster must run the same code: the tasks' arguments, the stream payloads
and the layers a model may use change between commits, and ``__version__`` does not follow
them. A worker's heartbeat carries ``code_id()`` with its device's lease; the API plans only on
devices whose code is its own, and ``arceus worker --join`` refuses to serve a cluster whose API
runs other code. The digest covers the ``arceus`` and ``workers`` packages' Python files as
this process imports them (their paths and text, line endings aside), so the same commit gives
the same id on every machine and OS, from a checkout or a wheel; local changes change it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from . import __version__

__all__ = ["SAME_CODE", "code_id", "different_code"]

_PACKAGES = ("arceus", "workers")
# What every message about a machine on other code asks for.
SAME_CODE = "every machine must run the same Arceus (the same commit or release, and the same local changes)"


@functools.cache
def code_id() -> str:
    """12 hex digits of SHA-256 over the shared packages' ``.py`` files, in path order."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        spec = importlib.util.find_spec(package)  # where an import would find it; imports nothing new
        if spec is None or not spec.submodule_search_locations:
            digest.update(f"{package}: missing\0".encode())
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        files = {path.relative_to(root).as_posix(): path for path in root.rglob("*.py")}
        for name in sorted(files):
            digest.update(f"{package}/{name}\0".encode())
            digest.update(files[name].read_bytes().replace(b"\r\n", b"\n") + b"\0")  # a Windows checkout's CRLF
    return digest.hexdigest()[:12]


def different_code(device: dict) -> str | None:
    """Why ``device`` cannot take a part of this process's jobs (its worker runs other code), or None."""
    theirs = device.get("code")
    if theirs == code_id():
        return None
    what = f"Arceus code {theirs}" if theirs else "an Arceus from before code ids"
    machine = device.get("host") or device.get("name") or "its machine"
    return (
        f"device {device['device_id']} ({device.get('name') or machine}) runs {what}, and this API runs "
        f"{__version__} (code {code_id()}): {SAME_CODE}. Install this one on {machine} and start its worker "
        "again (or, if the API is the one behind, update it and restart it)"
    )
