"""The ``arceus`` command line: one module per command group.

``arceus train`` trains a job across local stage processes (the engine alone, ``train.py``);
``arceus up`` / ``demo`` run the control plane on this machine (``cluster.py``);
``arceus worker`` joins the device pool and serves its queue (``worker.py``); ``arceus status`` /
``jobs`` ask the API (``jobs.py``); ``arceus doctor`` checks this machine (``doctor.py``).
"""

from __future__ import annotations

import argparse
import logging
import sys

from .. import __version__
from ..errors import ArceusError
from . import cluster, doctor, jobs, train, worker

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arceus", description="Train one PyTorch model split by layers across machines.")
    p.add_argument("--version", action="version", version=f"arceus {__version__}")
    sub = p.add_subparsers(dest="command")
    for group in (train, cluster, worker, jobs, doctor):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `arceus` alone: what it can do
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except ArceusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
