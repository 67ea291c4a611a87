"""One pipeline stage: holds its shard, runs the schedule, talks to its neighbours.

Every stage runs the same loop over messages. Stage 0's messages come from the dataset;
the others' come from the forward stream. A message is a training micro-batch, an
evaluation batch or a marker (``epoch_end``, ``eval_end``, ``end``) that each stage
passes on, so stages learn the run's structure from stage 0 in order, in band.
The last stage computes the loss and accuracy and writes the epoch metrics.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import torch
import torch.nn.functional as F

from .config import WIRE_CODECS
from .data import Dataset, batch_indices, load_dataset
from .errors import PayloadError, ProtocolError
from .events import EventLog
from .model import Shard, layer_specs
from .runspec import RunSpec
from .schedule import SCHEDULES
from .settings import Settings
from .streams import Abort, Receiver, Sender, stream_key
from .training import EpochStats, make_optimizer, pick_device
from .wire import decode, encode, raw_nbytes

__all__ = ["StageRunner", "read_weights", "run_stage"]

log = logging.getLogger(__name__)
KINDS = ("train", "eval", "epoch_end", "eval_end", "end")
PROGRESS_EVERY_S = 0.5


@dataclass
class Msg:
    header: dict
    x: torch.Tensor | None = None  # (B, features) input of this stage
    y: torch.Tensor | None = None  # (B,) labels, decoded lazily (only the last stage needs them)
    y_wire: bytes | None = None  # labels as they travel, passed on untouched


@dataclass
class Timers:
    compute_s: float = 0.0
    codec_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    bytes_raw: int = 0
    bytes_wire: int = 0
    messages: int = 0
    started: float = field(default_factory=time.perf_counter)

    def snapshot(self) -> dict:
        wall = time.perf_counter() - self.started
        busy = self.compute_s + self.codec_s
        return {
            "compute_s": self.compute_s,
            "codec_s": self.codec_s,
            "wait_s": self.wait_s,
            "send_s": self.send_s,
            "wall_s": wall,
            "utilization": busy / wall if wall > 0 else 0.0,
            "bytes_raw": self.bytes_raw,
            "bytes_wire": self.bytes_wire,
            "messages": self.messages,
        }


class StageRunner:
    def __init__(self, spec: RunSpec, stage: int, r: redis.Redis, settings: Settings, data: Dataset | None = None):
        self.spec, self.stage, self.r, self.settings = spec, stage, r, settings
        shard = spec.stages[stage]
        self.first, self.last = stage == 0, stage == spec.num_stages - 1
        self.who = f"stage {stage} (layers [{shard.start_layer}, {shard.end_layer}))"
        self.device = pick_device(spec.device_for(stage))
        self.model = Shard(layer_specs(spec.job.model), shard.start_layer, shard.end_layer, spec.train.seed)
        self.model.to(self.device)
        self.opt = make_optimizer(self.model.parameters(), spec.train)
        self.codec = WIRE_CODECS[spec.train.wire]
        self.schedule = SCHEDULES[spec.train.schedule]
        self.abort = Abort(r, spec.prefix)
        self.events = EventLog(r, spec.prefix)
        self.timers = Timers()
        self.data = data
        if self.first and self.data is None:
            self.data = load_dataset(spec.job.dataset, settings.data_dir, settings.download)
        if self.first and self.data.num_features != self.model.in_features:
            raise ProtocolError(
                f"dataset {spec.job.dataset.name} has {self.data.num_features} features per sample but "
                f"layer 0 expects {self.model.in_features} (model_config.layer_sizes[0])"
            )
        p, t, w = spec.prefix, settings.recv_timeout_s, settings.stream_window
        self.fwd_in = None if self.first else Receiver(r, stream_key(p, "fwd", stage), t, self.abort, self.who)
        self.bwd_in = None if self.last else Receiver(r, stream_key(p, "bwd", stage), t, self.abort, self.who)
        self.fwd_out = None if self.last else Sender(r, stream_key(p, "fwd", stage + 1), w, t, self.abort, self.who)
        self.bwd_out = None if self.first else Sender(r, stream_key(p, "bwd", stage - 1), w, t, self.abort, self.who)

    # ----------------------------------------------------------------- main loop
    def run(self) -> None:
        try:
            self.events.emit("stage_started", stage=self.stage, device=str(self.device), who=self.who)
            msgs = self._source()
            train_stats, val_stats = EpochStats(), EpochStats()
            last_progress = 0.0
            for msg in msgs:
                h = msg.header
                kind = h["kind"]
                if kind == "train":
                    step_stats = self._train_step(msg, msgs)
                    if self.last:
                        train_stats.loss_sum += step_stats.loss_sum
                        train_stats.correct += step_stats.correct
                        train_stats.samples += step_stats.samples
                        if time.monotonic() - last_progress > PROGRESS_EVERY_S:
                            last_progress = time.monotonic()
                            self.events.emit(
                                "progress", epoch=h["epoch"] + 1, step=h["step"] + 1, steps=h["steps"],
                                loss=step_stats.loss, accuracy=step_stats.accuracy, samples=train_stats.samples,
                            )  # fmt: skip
                    continue
                if kind == "eval":
                    self._eval_batch(msg, val_stats)
                    continue
                self._pass_on(msg)
                if kind == "epoch_end":
                    self.events.emit("stage", stage=self.stage, epoch=h["epoch"] + 1, **self.timers.snapshot())
                    self.timers = Timers()
                elif kind == "eval_end":
                    if self.last:
                        self._emit_epoch(h, train_stats, val_stats)
                    train_stats, val_stats = EpochStats(), EpochStats()
                    self.timers = Timers()
                elif kind == "end":
                    break
            self._publish_weights()
            self.events.emit("stage_done", stage=self.stage)
        except BaseException as e:
            reason = f"{self.who}: {type(e).__name__}: {e}"
            self.abort.set(reason)
            self.events.emit("error", stage=self.stage, reason=reason)
            raise
        finally:
            for rx in (self.fwd_in, self.bwd_in):
                if rx is not None:
                    rx.close()

    def _emit_epoch(self, h: dict, train: EpochStats, val: EpochStats) -> None:
        secs = h["train_seconds"]
        self.events.emit(
            "epoch", epoch=h["epoch"] + 1, epochs=self.spec.train.epochs,
            train_loss=train.loss, train_accuracy=train.accuracy, val_loss=val.loss, val_accuracy=val.accuracy,
            samples_per_s=train.samples / secs if secs > 0 else 0.0, seconds=secs, samples=train.samples,
        )  # fmt: skip

    # ----------------------------------------------------------------- sources
    def _source(self) -> Iterator[Msg]:
        return self._dataset_source() if self.first else self._stream_source()

    def _dataset_source(self) -> Iterator[Msg]:
        data, ds, train = self.data, self.spec.job.dataset, self.spec.train
        step = 0
        for epoch in range(train.epochs):
            t0 = time.perf_counter()
            batches = batch_indices(len(data.train_y), ds.batch_size, train.seed, epoch)
            for x, y in _prefetched(data, batches):  # (B, F), (B,)
                m = min(train.micro_batches, len(y))
                for i, (xm, ym) in enumerate(zip(x.tensor_split(m), y.tensor_split(m), strict=True)):
                    head = {"kind": "train", "epoch": epoch, "step": step, "steps": len(batches),
                            "mb": i, "n_mb": m, "bs": len(y)}  # fmt: skip
                    yield Msg(head, xm, ym)
                step += 1
            secs = time.perf_counter() - t0
            yield Msg({"kind": "epoch_end", "epoch": epoch, "train_seconds": secs})
            for start in range(0, len(data.val_y), ds.val_batch_size):
                end = start + ds.val_batch_size
                yield Msg({"kind": "eval", "epoch": epoch}, data.val_x[start:end], data.val_y[start:end])
            yield Msg({"kind": "eval_end", "epoch": epoch, "train_seconds": secs})
        yield Msg({"kind": "end"})

    def _stream_source(self) -> Iterator[Msg]:
        while True:
            yield self._receive(self.fwd_in, "forward activations")

    def _receive(self, rx: Receiver, what: str) -> Msg:
        t0 = time.perf_counter()
        entry_id, fields = rx.recv(what)
        t1 = time.perf_counter()
        self.timers.wait_s += t1 - t0
        where = f"{self.who}: entry {entry_id.decode()} of {rx.key}"
        try:
            header = json.loads(fields[b"h"])
            if not isinstance(header, dict) or header.get("kind") not in KINDS:
                raise ValueError(f"header kind must be one of {KINDS}")
        except (KeyError, ValueError, UnicodeDecodeError) as e:
            raise ProtocolError(f"{where}: malformed header: {e}") from e
        msg = Msg(header, y_wire=fields.get(b"y"))
        if b"x" in fields:
            try:
                msg.x = decode(fields[b"x"], self.settings.max_payload_elements).to(self.device)
            except PayloadError as e:
                raise PayloadError(f"{where}: {e}") from e
        self.timers.codec_s += time.perf_counter() - t1
        self.timers.messages += 1
        return msg

    def _send(self, tx: Sender, header: dict, x: torch.Tensor | None, msg: Msg | None, what: str) -> None:
        t0 = time.perf_counter()
        fields = {"h": json.dumps(header).encode()}
        if x is not None:
            fields["x"] = encode(x, self.codec)
            self.timers.bytes_raw += raw_nbytes(x)
            self.timers.bytes_wire += len(fields["x"])
        if msg is not None and (msg.y is not None or msg.y_wire is not None):
            fields["y"] = msg.y_wire if msg.y_wire is not None else encode(_small_labels(msg.y), "raw")
        t1 = time.perf_counter()
        self.timers.codec_s += t1 - t0
        tx.send(fields, what)
        self.timers.send_s += time.perf_counter() - t1
        self.timers.messages += 1

    def _labels(self, msg: Msg) -> torch.Tensor:
        if msg.y is None:
            if msg.y_wire is None:
                raise ProtocolError(f"{self.who}: step {msg.header.get('step')} arrived without labels")
            try:
                msg.y = decode(msg.y_wire, self.settings.max_payload_elements).long()
            except PayloadError as e:
                raise PayloadError(f"{self.who}: labels: {e}") from e
        return msg.y.to(self.device)

    def _pass_on(self, msg: Msg) -> None:
        if not self.last:
            self._send(self.fwd_out, msg.header, None, None, f"marker {msg.header['kind']}")

    # ----------------------------------------------------------------- compute
    def _train_step(self, first: Msg, msgs: Iterator[Msg]) -> EpochStats:
        h0 = first.header
        step, n_mb = h0["step"], h0["n_mb"]
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        stats = EpochStats()
        pending_stats: list[tuple[torch.Tensor, ...]] = []
        for action in self.schedule(self.stage, self.spec.num_stages, n_mb):
            if action.op == "F":
                msg = first if action.mb == 0 else next(msgs)
                h = msg.header
                if h["kind"] != "train" or h["step"] != step or h["mb"] != action.mb:
                    raise ProtocolError(f"{self.who}: expected forward of step {step} micro-batch {action.mb}, got {h}")
                t0 = time.perf_counter()
                x = msg.x
                if not self.first:
                    x.requires_grad_(True)
                out = self.model(x)  # (b, out_features)
                if self.last:
                    y = self._labels(msg)
                    loss_sum = F.cross_entropy(out, y, reduction="sum")
                    pending_stats.append((out.detach(), y, loss_sum.detach()))  # counted after the sends
                    outputs[action.mb] = loss_sum / h["bs"]  # sums to the batch mean over micro-batches
                else:
                    outputs[action.mb] = out
                inputs[action.mb] = x
                self.timers.compute_s += time.perf_counter() - t0
                if not self.last:
                    self._send(self.fwd_out, h, out.detach(), msg, "forward activations")
            elif action.op == "B":
                if self.last:
                    grad = None
                else:
                    g = self._receive(self.bwd_in, f"gradients of step {step} micro-batch {action.mb}")
                    gh = g.header
                    if gh.get("step") != step or gh.get("mb") != action.mb or g.x is None:
                        raise ProtocolError(
                            f"{self.who}: expected gradients of step {step} micro-batch {action.mb}, got {gh}"
                        )
                    grad = g.x
                t0 = time.perf_counter()
                outputs.pop(action.mb).backward(grad)
                x = inputs.pop(action.mb)
                self.timers.compute_s += time.perf_counter() - t0
                if not self.first:
                    self._send(
                        self.bwd_out, {"kind": "train", "step": step, "mb": action.mb}, x.grad, None, "gradients"
                    )
            else:  # STEP
                t0 = time.perf_counter()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                for logits, y, loss_sum in pending_stats:
                    stats.add(logits, y, loss_sum)
                self.timers.compute_s += time.perf_counter() - t0
        return stats

    @torch.no_grad()
    def _eval_batch(self, msg: Msg, stats: EpochStats) -> None:
        t0 = time.perf_counter()
        out = self.model(msg.x)
        if self.last:
            y = self._labels(msg)
            stats.add(out, y, F.cross_entropy(out, y, reduction="sum"))
        self.timers.compute_s += time.perf_counter() - t0
        if not self.last:
            self._send(self.fwd_out, msg.header, out, msg, "evaluation activations")

    def _publish_weights(self) -> None:
        """Final parameters into ``<prefix>:weights`` (lossless payloads), for tests and export."""
        state = {k: encode(v.detach().cpu(), "raw") for k, v in self.model.state_dict().items()}
        self.r.hset(f"{self.spec.prefix}:weights", mapping=state)


def _prefetched(data: Dataset, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Gather batch k+1 in a thread while batch k trains: a random gather from a large
    dataset is memory-bound and would otherwise sit on the pipeline's critical path."""
    with ThreadPoolExecutor(1, thread_name_prefix="arceus-prefetch") as pool:
        gather = lambda idx: (data.train_x[idx], data.train_y[idx])  # noqa: E731
        nxt = pool.submit(gather, batches[0]) if batches else None
        for k in range(len(batches)):
            batch = nxt.result()
            if k + 1 < len(batches):
                nxt = pool.submit(gather, batches[k + 1])
            yield batch


def read_weights(r: redis.Redis, prefix: str) -> dict[str, torch.Tensor]:
    """The final parameters all stages published, keyed as in the unsplit model's state_dict."""
    return {k.decode(): decode(v) for k, v in r.hgetall(f"{prefix}:weights").items()}


def _small_labels(y: torch.Tensor) -> torch.Tensor:
    # Class ids fit a byte for up to 256 classes: 1 byte a sample on the wire instead of 8.
    return y.to(torch.uint8) if len(y) and 0 <= int(y.min()) and int(y.max()) < 256 else y


def run_stage(spec_dict: dict, stage: int, redis_url: str, settings: Settings, threads: int | None = None) -> None:
    """Entry point of a stage process (local cluster) or task (Celery worker)."""
    if threads:
        torch.set_num_threads(threads)
    spec = RunSpec.from_dict(spec_dict)
    r = redis.Redis.from_url(redis_url)
    try:
        StageRunner(spec, stage, r, settings).run()
    finally:
        r.close()
