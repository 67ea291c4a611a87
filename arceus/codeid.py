"""Which Arceus a process runs: a digest of the code that the API and the workers share.

Every process of a cluster must run the same code: the tasks' arguments, the stream payloads
and the layers a model may use change between commits, and ``__version__`` does not follow
them. A worker reports ``code_id()`` with its device; the API plans only on devices whose code
is its own, and ``arceus worker --join`` refuses to serve a cluster whose API runs other code.
The digest covers the ``arceus`` and ``workers`` packages' Python files (their paths and bytes),
so the same commit gives the same id on every machine, installed from a checkout or a wheel.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from . import __version__

__all__ = ["code_id", "describe_code", "different_code"]

_PACKAGES = ("arceus", "workers")


@functools.cache
def code_id() -> str:
    """12 hex digits of SHA-256 over the shared packages' ``.py`` files, in path order."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def describe_code(code: str | None) -> str:
    return f"Arceus code {code}" if code else "an Arceus from before code ids"


def different_code(device: dict) -> str | None:
    """Why ``device`` cannot take a part of this process's jobs (its worker runs other code), or None."""
    theirs = device.get("code")
    if theirs == code_id():
        return None
    name = device.get("name") or device.get("host") or "its machine"
    return (
        f"device {device['device_id']} ({name}) runs {describe_code(theirs)}, and this API runs {__version__} "
        f"(code {code_id()}): every machine must run the same Arceus. Install this one on {name} and start its "
        "worker again"
    )
