"""The torch device a stage runs on, and what a worker tells the API about its machine."""

from __future__ import annotations

import logging
import os
import platform
import re
import socket
import subprocess
import sys
import time

import torch

from ..errors import ConfigError

__all__ = [
    "available_from_vm_stat",
    "describe_machine",
    "free_memory_gb",
    "matmul_gflops",
    "pick_device",
    "synchronize",
]

log = logging.getLogger(__name__)

SPEED_S = 0.5  # how long a worker times matmuls for: long enough to see a CPU quota (100 ms periods)


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


def describe_machine(device: str | None = None, measure: bool = True) -> dict:
    """What a worker tells the API about itself when it registers; with ``measure``, its speed
    (``matmul_gflops``) and free memory too, which the plan divides the work by."""
    dev = pick_device(device)
    info = {"host": socket.gethostname(), "platform": platform.platform(), "torch_device": str(dev),
            "torch": torch.__version__}  # fmt: skip
    if measure:
        try:
            info["gflops"] = round(matmul_gflops(dev), 2)
        except (RuntimeError, MemoryError) as e:  # a device that fails a matmul still registers; plans ignore speeds
            log.warning("could not measure %s's speed: %s: %s", dev, type(e).__name__, e)
        info["free_memory_gb"] = free_memory_gb(dev)
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    if dev.type == "cuda":
        info["accelerator"] = torch.cuda.get_device_name(dev)
        info["accelerator_memory_gb"] = round(torch.cuda.get_device_properties(dev).total_memory / 2**30, 1)
    return info


def synchronize(dev: torch.device) -> None:
    """Wait for the work queued on ``dev`` (CUDA, MPS); nothing to wait for on the CPU."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def matmul_gflops(dev: torch.device, seconds: float = SPEED_S) -> float:
    """Sustained fp32 matmul GFLOP/s on ``dev`` with this process's torch threads: as many
    square matmuls as fit in ``seconds`` of wall time (a CPU quota or a busy machine shows)."""
    n = 512 if dev.type == "cpu" else 2048
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=g).to(dev), torch.randn(n, n, generator=g).to(dev)
    torch.mm(a, b)  # warm up: kernels, thread pool
    synchronize(dev)
    done, t0 = 0, time.perf_counter()
    while True:
        torch.mm(a, b)
        synchronize(dev)
        done += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2 * n**3 * done / elapsed / 1e9


def free_memory_gb(dev: torch.device) -> float | None:
    """Memory a stage may still take on ``dev``, in GiB: the GPU's free memory for CUDA, what
    Metal recommends less what it holds for MPS, else the machine's available memory (Linux's
    MemAvailable; on macOS, its free and inactive pages)."""
    try:
        if dev.type == "cuda":
            free = torch.cuda.mem_get_info(dev)[0]
        elif dev.type == "mps":
            free = torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()
        elif sys.platform == "darwin":
            out = subprocess.run(["vm_stat"], capture_output=True, text=True, timeout=10, check=True).stdout
            free = available_from_vm_stat(out)
        else:
            with open("/proc/meminfo") as f:
                fields = dict(line.split(":", 1) for line in f)
            free = int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError, AttributeError, RuntimeError, subprocess.SubprocessError):
        return None
    return round(max(free, 0) / 2**30, 2)


def available_from_vm_stat(text: str) -> int:
    """Bytes macOS can give a new process at once, from ``vm_stat``'s output: its free pages and
    its inactive ones (cached, dropped on demand), at the page size it states. ValueError when
    the output lacks one of them."""
    size = re.search(r"page size of (\d+) bytes", text)
    pages = {m[1]: int(m[2]) for m in re.finditer(r"^Pages (free|inactive):\s+(\d+)\.?\s*$", text, re.M)}
    if size is None or len(pages) != 2:
        raise ValueError(f"vm_stat's output has no page size, free and inactive pages: {text[:200]!r}")
    return int(size[1]) * (pages["free"] + pages["inactive"])
