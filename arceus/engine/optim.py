"""The optimizer every stage and the single-process reference use, so both do the same math."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import TrainConfig

__all__ = ["clip_to", "grad_norms", "make_optimizer"]


def make_optimizer(params: Iterable[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    # foreach=False: the single-tensor path gives identical results regardless of how params are grouped.
    if train.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=train.learning_rate, betas=train.betas, eps=train.eps,
                                 weight_decay=train.weight_decay, foreach=False)  # fmt: skip
    return torch.optim.SGD(params, lr=train.learning_rate, momentum=train.momentum,
                           weight_decay=train.weight_decay, foreach=False)  # fmt: skip


def grad_norms(params: Iterable[torch.nn.Parameter]) -> list[float]:
    """Each parameter's gradient norm, in order: what a stage contributes to the global norm."""
    return [float(torch.linalg.vector_norm(p.grad.detach(), 2)) for p in params if p.grad is not None]


def clip_to(params: Iterable[torch.nn.Parameter], norms: list[float], max_norm: float) -> float:
    """Scale the gradients as ``torch.nn.utils.clip_grad_norm_`` does, with the same float32
    arithmetic, from every stage's per-parameter norms (in model order); returns the global norm."""
    total = torch.linalg.vector_norm(torch.tensor(norms, dtype=torch.float32), 2)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for p in params:
        if p.grad is not None:
            p.grad.detach().mul_(coef.to(p.grad.device))
    return float(total)
