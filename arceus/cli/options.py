"""Command-line flags made from ``config.TRAIN_OPTIONS``: the same defaults and ranges as the API."""

from __future__ import annotations

import argparse

from ..config import TRAIN_OPTIONS, TrainConfig

__all__ = ["add_train_options", "train_config"]

# Flags other than the option's own name with dashes.
_FLAGS = {"learning_rate": ("--lr", "--learning-rate")}


def add_train_options(p: argparse.ArgumentParser, names: tuple[str, ...] = tuple(TRAIN_OPTIONS)) -> None:
    for name in names:
        o = TRAIN_OPTIONS[name]
        flags = _FLAGS.get(name, ("--" + name.replace("_", "-"),))
        if o.choices:
            kind: dict = {"choices": o.choices}
        elif o.type is tuple:
            kind = {"type": float, "nargs": 2, "metavar": ("B1", "B2")}
        else:
            kind = {"type": o.type}
        p.add_argument(*flags, dest=name, default=o.default, help=f"{o.help} (default {o.default})", **kind)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The options given (or defaulted) on the command line, checked as the API checks them."""
    return TrainConfig.parse({name: getattr(args, name) for name in TRAIN_OPTIONS if hasattr(args, name)})
