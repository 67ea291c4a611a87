"""Pieces the pipeline stages and the reference trainer share, so both do the same math."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from .config import TrainConfig
from .errors import ConfigError

__all__ = ["EpochStats", "make_optimizer", "pick_device"]


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path gives identical results regardless of how params are grouped.
    return torch.optim.SGD(params, lr=train.learning_rate, momentum=train.momentum, foreach=False)


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


@dataclass
class EpochStats:
    """Sums over samples, so loss and accuracy are sample-weighted whatever the batch sizes."""

    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        self.loss_sum += float(loss_sum)
        self.correct += int((logits.argmax(dim=1) == labels).sum())
        self.samples += len(labels)

    def merge(self, other: EpochStats) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.samples += other.samples

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.samples, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.samples, 1)
