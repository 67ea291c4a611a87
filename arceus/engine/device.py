"""The torch device a stage runs on, and what a worker tells the API about its machine."""

from __future__ import annotations

import os
import platform
import socket

import torch

from ..errors import ConfigError

__all__ = ["describe_machine", "pick_device"]


def pick_device(requested: str | None = None) -> torch.device:
    """mps > cuda > cpu, unless ``requested`` names one."""
    if requested:
        try:
            dev = torch.device(requested)
        except RuntimeError as e:
            raise ConfigError("device", f"unknown torch device {requested!r}") from e
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", "cuda was requested but torch sees no CUDA device")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("device", "mps was requested but this machine has no MPS backend")
        return dev
    if torch.backends.mps.is_available():
        return torch.device("mps")
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def describe_machine(device: str | None = None) -> dict:
    """What a worker tells the API about itself when it registers."""
    dev = pick_device(device)
    info = {"host": socket.gethostname(), "platform": platform.platform(), "torch_device": str(dev),
            "torch": torch.__version__}  # fmt: skip
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if dev.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(dev)
        info["accelerator_memory_gb"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    return info
