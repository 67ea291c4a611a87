"""The same job trained in one process: same init, data order and optimizer as the pipeline."""

from __future__ import annotations

import time

import torch

from ..config import ModelConfig, TrainConfig
from ..plan.layers import resolve
from .data import Dataset, batch_indices
from .metrics import EpochStats, loss_sum_of
from .model import Shard, set_dropout_step
from .optim import make_optimizer

__all__ = ["evaluate", "train_reference"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> EpochStats:
    model.eval()
    stats = EpochStats()
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        labels = y[start : start + batch_size]
        stats.add(logits, labels, loss_sum_of(logits, labels))
    return stats


def train_reference(
    model_cfg: ModelConfig,
    data: Dataset,
    train: TrainConfig,
    batch_size: int,
    val_batch_size: int,
    max_steps: int | None = None,
) -> tuple[Shard, list[dict]]:
    """Train the unsplit model; returns it and one history row per epoch (as the pipeline reports).

    Each batch is cut into ``train.micro_batches`` micro-batches whose gradients accumulate, as
    the pipeline does: BatchNorm's statistics and dropout's masks are then those of the pipeline."""
    layers = resolve(model_cfg.specs(), data.sample)
    model = Shard(layers, 0, len(layers), train.seed)
    opt = make_optimizer(model.parameters(), train)
    history, steps = [], 0
    for epoch in range(train.epochs):
        stats, t0 = EpochStats(), time.perf_counter()
        for idx in batch_indices(len(data.train_y), batch_size, train.seed, epoch):
            if max_steps is not None and steps >= max_steps:
                break
            x, y = data.train_x[idx], data.train_y[idx]
            model.train()
            opt.zero_grad(set_to_none=True)
            m = min(train.micro_batches, len(y))
            for mb, (xm, ym) in enumerate(zip(x.tensor_split(m), y.tensor_split(m), strict=True)):
                set_dropout_step(model, steps, mb)
                logits = model(xm)  # (b, classes) or (b, T, 256)
                loss_sum = loss_sum_of(logits, ym)
                (loss_sum / y.numel()).backward()  # sums to the batch's mean over the micro-batches
                stats.add(logits.detach(), ym, loss_sum.detach())
            if train.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip, foreach=False)
            opt.step()
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
