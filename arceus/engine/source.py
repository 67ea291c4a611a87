"""Stage 0's messages: the dataset cut into micro-batches, with the run's markers, in order.

A plain generator (no Redis): every other stage learns the run's structure from what
stage 0 yields here and passes on. Per epoch: the training micro-batches of every
mini-batch, ``epoch_end``, the evaluation batches, ``eval_end``; at the very end ``end``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

from ..config import DatasetConfig, TrainConfig
from ..errors import ConfigError
from ..plan.layers import SampleShape
from ..plan.runspec import RunSpec
from ..settings import Settings
from .data import Dataset, batch_indices, load_dataset, steps_per_epoch
from .messages import Msg, small_labels

__all__ = ["check_batchnorm_rows", "dataset_messages", "prefetched", "training_data"]


def training_data(dataset: DatasetConfig, settings: Settings, sample: SampleShape) -> Dataset:
    """Stage 0's dataset, checked against the sample shape the model was planned for."""
    data = load_dataset(dataset, settings.data_dir, settings.download)
    if data.sample != sample:
        raise ConfigError(
            "dataset_config.name",
            f"{dataset.name}'s samples have shape {list(data.sample_shape)}, the model expects {list(sample.shape)}",
        )
    return data


def dataset_messages(
    data: Dataset, dataset: DatasetConfig, train: TrainConfig, device: torch.device, start_step: int = 0
) -> Iterator[Msg]:
    """``train.epochs`` epochs from step ``start_step`` of the data order (a resumed run starts
    inside an epoch when its checkpoint was). A ``checkpoint`` marker follows every
    ``train.checkpoint_every``-th step, or every epoch's evaluation when that is 0, and always
    the run's last evaluation; it says where training continues from."""
    per_epoch = steps_per_epoch(len(data.train_y), dataset.batch_size)
    first_epoch, skip = divmod(start_step, per_epoch)
    every, step = train.checkpoint_every, start_step
    last_step = first_epoch * per_epoch + train.epochs * per_epoch
    for epoch in range(first_epoch, first_epoch + train.epochs):
        t0 = time.perf_counter()
        batches = batch_indices(len(data.train_y), dataset.batch_size, train.seed, epoch)
        start = skip if epoch == first_epoch else 0
        for i, (x, y) in enumerate(prefetched(data, batches[start:]), start=start):  # (B, F), (B,)
            m = min(train.micro_batches, len(y))
            for mb, (xm, ym) in enumerate(zip(x.tensor_split(m), y.tensor_split(m), strict=True)):
                head = {"kind": "train", "epoch": epoch, "step": step, "i": i, "steps": len(batches),
                        "mb": mb, "n_mb": m, "bs": len(y)}  # fmt: skip
                yield Msg(head, xm.to(device), ym)
            step += 1
            if every and step % every == 0 and step < last_step:
                yield _checkpoint(step, per_epoch, first_epoch + train.epochs)
        secs = time.perf_counter() - t0
        yield Msg({"kind": "epoch_end", "epoch": epoch, "train_seconds": secs})
        for start in range(0, len(data.val_y), dataset.val_batch_size):
            end = start + dataset.val_batch_size
            yield Msg({"kind": "eval", "epoch": epoch}, data.val_x[start:end].to(device), data.val_y[start:end])
        yield Msg({"kind": "eval_end", "epoch": epoch, "train_seconds": secs})
        if not every or step == last_step:
            yield _checkpoint(step, per_epoch, first_epoch + train.epochs)
    yield Msg({"kind": "end"})


def _checkpoint(step: int, per_epoch: int, end_epoch: int) -> Msg:
    """Where training continues from (``epoch``'s ``batch``), and the epoch the run ends before."""
    epoch, batch = divmod(step, per_epoch)
    return Msg({"kind": "checkpoint", "step": step, "epoch": epoch, "batch": batch, "end_epoch": end_epoch})


# Batches gathered per hand-off to the prefetch thread, bounded by their bytes: a hand-off costs
# more than gathering a small batch (0.3-0.4 ms of stage 0's step for the seed job, measured by
# bench/profile_stages.py), so small batches travel in chunks.
PREFETCH_BYTES = 8 << 20
PREFETCH_MAX_BATCHES = 32


def prefetched(data: Dataset, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Gather the next chunk of batches in a thread while this chunk trains: a random gather from
    a large dataset is memory-bound and would otherwise sit on the pipeline's critical path."""
    if not batches:
        return
    row_bytes = data.train_x[:1].numel() * data.train_x.element_size()
    per_chunk = max(1, min(PREFETCH_MAX_BATCHES, PREFETCH_BYTES // max(1, row_bytes * len(batches[0]))))
    chunks = [batches[k : k + per_chunk] for k in range(0, len(batches), per_chunk)]

    def gather(chunk: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.cat(chunk)
        xs, ys = data.train_x[idx], small_labels(data.train_y[idx])  # cast here, off the critical path
        sizes = [len(b) for b in chunk]
        return list(zip(xs.split(sizes), ys.split(sizes), strict=True))

    with ThreadPoolExecutor(1, thread_name_prefix="arceus-prefetch") as pool:
        nxt = pool.submit(gather, chunks[0])
        for k in range(len(chunks)):
            ready = nxt.result()
            if k + 1 < len(chunks):
                nxt = pool.submit(gather, chunks[k + 1])
            yield from ready


def check_batchnorm_rows(spec: RunSpec, samples: int) -> None:
    """BatchNorm needs two rows per micro-batch in training: say so before the run starts, not
    when the epoch's last, short batch arrives."""
    if not any(layer.type.startswith("batchnorm") for layer in spec.job.layers):
        return
    bs, m = spec.job.dataset.batch_size, spec.train.micro_batches
    sizes = [bs] + ([samples % bs] if samples % bs else [])
    fewest = min(b // min(m, b) for b in sizes)
    if fewest < 2:
        raise ConfigError(
            "dataset_config.batch_size",
            f"BatchNorm needs at least 2 samples per micro-batch, but batches of {sizes} samples in "
            f"{m} micro-batches give {fewest}: use larger batches or fewer micro-batches",
        )
