"""The optimizer every stage and the single-process reference use, so both do the same math."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TrainConfig

__all__ = ["make_optimizer"]


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path gives identical results regardless of how params are grouped.
    return torch.optim.SGD(params, lr=train.learning_rate, momentum=train.momentum, foreach=False)
