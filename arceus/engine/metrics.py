"""What a stage measures: time and bytes per epoch, loss and accuracy sums, peak memory,
and the progress and epoch events the last stage writes from them."""

from __future__ import annotations

import math
import resource
import sys
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..events import EventLog

__all__ = ["EpochReport", "EpochStats", "StageMetrics", "loss_sum_of", "peak_rss_mb"]

PROGRESS_EVERY_S = 0.5


@dataclass
class StageMetrics:
    """One stage's counters for one epoch: seconds by activity, bytes raw vs on the wire,
    messages, and what the schedule bounds (micro-batches and autograd bytes held)."""

    compute_s: float = 0.0
    codec_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    bytes_raw: int = 0
    bytes_wire: int = 0
    messages: int = 0
    # Most micro-batches whose activations this stage held at once (the schedule's bound).
    max_in_flight: int = 0
    # Most bytes autograd kept for backward at once (engine.saved): what the schedule bounds.
    saved_peak_bytes: int = 0
    started: float = field(default_factory=time.perf_counter)
    cpu_started: float = field(default_factory=time.process_time)

    def snapshot(self) -> dict:
        wall = time.perf_counter() - self.started
        busy = self.compute_s + self.codec_s
        return {
            "compute_s": self.compute_s,
            "codec_s": self.codec_s,
            "wait_s": self.wait_s,
            "send_s": self.send_s,
            "wall_s": wall,
            "cpu_s": time.process_time() - self.cpu_started,
            "utilization": busy / wall if wall > 0 else 0.0,
            "bytes_raw": self.bytes_raw,
            "bytes_wire": self.bytes_wire,
            "messages": self.messages,
            "max_in_flight": self.max_in_flight,
            "peak_saved_mb": self.saved_peak_bytes / 2**20,
            "peak_rss_mb": peak_rss_mb(),
        }


def peak_rss_mb() -> float:
    """This process's peak resident memory (a worker's covers every job it ran)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def loss_sum_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over every prediction: (b, classes) vs (b,), or (b, T, 256) vs (b, T)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum")


@dataclass
class EpochStats:
    """Sums over predictions (one per sample, or one per position for text), so loss and
    accuracy are weighted alike whatever the batch sizes."""

    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    predictions: int = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> None:
        self.loss_sum += float(loss_sum)
        self.correct += int((logits.argmax(dim=-1) == labels).sum())
        self.samples += len(labels)
        self.predictions += labels.numel()

    def merge(self, other: EpochStats) -> None:
        self.loss_sum += other.loss_sum
        self.correct += other.correct
        self.samples += other.samples
        self.predictions += other.predictions

    @property
    def loss(self) -> float:
        """Mean cross-entropy per prediction, in nats."""
        return self.loss_sum / max(self.predictions, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.predictions, 1)


class EpochReport:
    """The last stage's sums over an epoch's training and evaluation, and the events made of
    them: ``progress`` at most every ``PROGRESS_EVERY_S`` (the first step at once) and
    ``epoch`` once the epoch's evaluation is done."""

    def __init__(self, events: EventLog, epochs: int, text: bool = False, start_step: int = 0) -> None:
        # ``epochs`` counts the run's epochs; a run resumed at ``start_step`` numbers them on from
        # where the job was, so "epoch 3/4" reads the same as in one uninterrupted run.
        self.events, self.epochs, self.text, self.start_step = events, epochs, text, start_step
        self.end_epoch: int | None = None
        self.train, self.val = EpochStats(), EpochStats()
        self._last_progress = 0.0

    def train_step(self, header: dict, step: EpochStats) -> None:
        self.train.merge(step)
        if self.end_epoch is None:  # steps per epoch come with the first step
            self.end_epoch = self.start_step // header["steps"] + self.epochs
        if time.monotonic() - self._last_progress > PROGRESS_EVERY_S:
            self._last_progress = time.monotonic()
            self.events.emit(
                "progress", epoch=header["epoch"] + 1, step=header["i"] + 1, steps=header["steps"],
                loss=step.loss, accuracy=step.accuracy, samples=self.train.samples, job_step=header["step"] + 1,
            )  # fmt: skip

    def epoch_done(self, header: dict) -> None:
        """``header`` is the ``eval_end`` marker's: it carries the epoch's training seconds."""
        secs, train, val = header["train_seconds"], self.train, self.val
        # Text: per byte predicted; bits per byte is the loss in bits.
        text = {"tokens_per_s": train.predictions / secs if secs > 0 else 0.0,
                "val_bits_per_byte": val.loss / math.log(2)} if self.text else {}  # fmt: skip
        self.events.emit(
            "epoch", epoch=header["epoch"] + 1, epochs=self.end_epoch or self.epochs,
            train_loss=train.loss, train_accuracy=train.accuracy, val_loss=val.loss, val_accuracy=val.accuracy,
            samples_per_s=train.samples / secs if secs > 0 else 0.0, seconds=secs, samples=train.samples, **text,
        )  # fmt: skip
        self.train, self.val = EpochStats(), EpochStats()
