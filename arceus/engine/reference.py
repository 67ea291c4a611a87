"""The same job trained in one process: same init, data order and optimizer as the pipeline."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..config import ModelConfig, TrainConfig
from .data import Dataset, batch_indices
from .metrics import EpochStats
from .model import Shard, layer_specs
from .optim import make_optimizer

__all__ = ["evaluate", "train_reference"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> EpochStats:
    stats = EpochStats()
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        stats.add(logits, labels, F.cross_entropy(logits, labels, reduction="sum"))
    return stats


def train_reference(
    model_cfg: ModelConfig,
    data: Dataset,
    train: TrainConfig,
    batch_size: int,
    val_batch_size: int,
    max_steps: int | None = None,
) -> tuple[Shard, list[dict]]:
    """Train the unsplit model; returns it and one history row per epoch (as the pipeline reports)."""
    specs = layer_specs(model_cfg)
    model = Shard(specs, 0, len(specs), train.seed)
    opt = make_optimizer(model.parameters(), train)
    history, steps = [], 0
    for epoch in range(train.epochs):
        stats, t0 = EpochStats(), time.perf_counter()
        for idx in batch_indices(len(data.train_y), batch_size, train.seed, epoch):
            if max_steps is not None and steps >= max_steps:
                break
            x, y = data.train_x[idx], data.train_y[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            loss_sum = F.cross_entropy(logits, y, reduction="sum")
            (loss_sum / len(y)).backward()
            opt.step()
            stats.add(logits.detach(), y, loss_sum.detach())
            steps += 1
        seconds = time.perf_counter() - t0
        val = evaluate(model, data.val_x, data.val_y, val_batch_size)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": stats.loss,
                "train_accuracy": stats.accuracy,
                "val_loss": val.loss,
                "val_accuracy": val.accuracy,
                "samples_per_s": stats.samples / seconds if seconds > 0 else 0.0,
                "seconds": seconds,
            }
        )
    return model, history
