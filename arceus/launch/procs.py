"""Helpers for the processes Arceus starts: a free loopback port, dying with the parent, stopping."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable

from ..settings import Settings

__all__ = ["child_environment", "free_port", "parent_death_hook", "stop_processes"]


def child_environment(settings: Settings) -> dict[str, str]:
    """Our environment for a child process, its ``ARCEUS_*`` variables replaced by ``settings``':
    the child reads exactly the settings we hand it, not what we happened to inherit."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("ARCEUS_")}
    return {**inherited, **settings.to_env()}


def free_port() -> int:
    """A port free on 127.0.0.1 now (another process may still take it before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def parent_death_hook() -> Callable[[], None] | None:
    """``preexec_fn`` that has the kernel stop the child when we die (Linux); None elsewhere."""
    return _die_with_parent if sys.platform.startswith("linux") else None


def stop_processes(procs: Iterable[subprocess.Popen], timeout_s: float = 15) -> None:
    """SIGTERM all, then wait; whatever has not exited after ``timeout_s`` is killed."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
