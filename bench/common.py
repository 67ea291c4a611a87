"""What the benchmarks share: a synthetic MNIST-format set on disk, and how runs are summarised."""

from __future__ import annotations

import atexit
import shutil
import statistics
import tempfile
from pathlib import Path

from arceus.config import DatasetConfig
from arceus.engine.data import text_bytes
from arceus.engine.idx import write_synthetic_mnist
from arceus.settings import Settings

__all__ = ["last_epoch_busy", "median_rate", "synthetic_mnist", "text_corpus"]


def synthetic_mnist(n_train: int, n_val: int) -> Settings:
    """Settings whose data directory holds a learnable MNIST-format set of ``n_train`` /
    ``n_val`` samples (read by torchvision's MNIST loader), for MNIST-sized runs where MNIST
    cannot be had. The directory is removed when the benchmark exits."""
    tmp = Path(tempfile.mkdtemp(prefix="arceus-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    write_synthetic_mnist(tmp, n_train=n_train, n_val=n_val)
    return Settings.from_env(data_dir=tmp)


def text_corpus(n_bytes: int) -> Settings:
    """Settings whose data directory holds ``corpus.txt``: the first ``n_bytes`` of the offline
    text stand-in (Python's own sources), so an epoch is as long as a benchmark wants."""
    tmp = Path(tempfile.mkdtemp(prefix="arceus-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    (tmp / "corpus.txt").write_bytes(text_bytes(DatasetConfig(name="text"), tmp)[:n_bytes])
    return Settings.from_env(data_dir=tmp)


def median_rate(epochs: list[dict]) -> float:
    """Median samples/s over epochs 2..N (epoch 1 includes start-up)."""
    rates = [e["samples_per_s"] for e in epochs[1:]] or [epochs[0]["samples_per_s"]]
    return statistics.median(rates)


def last_epoch_busy(epochs: list[dict], stages: list[dict], share: str = "utilization") -> list[float]:
    """Each stage's utilization (busy / wall) in the run's last epoch, in stage order; or, with
    ``share`` one of its seconds (``send_s``, ``wait_s``, ...), that part of its wall time."""
    last = sorted((s for s in stages if s["epoch"] == epochs[-1]["epoch"]), key=lambda s: s["stage"])
    if share == "utilization":
        return [round(s["utilization"], 2) for s in last]
    return [round(s[share] / s["wall_s"], 2) if s["wall_s"] > 0 else 0.0 for s in last]
