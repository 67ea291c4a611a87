"""One pipeline stage: holds its shard, runs the schedule, talks to its neighbours.

Every stage runs the same loop over messages. Stage 0's messages come from the dataset;
the others' come from the forward stream. A message is a training micro-batch, an
evaluation batch or a marker (``epoch_end``, ``eval_end``, ``end``) that each stage
passes on, so stages learn the run's structure from stage 0 in order, in band.
The last stage computes the loss and accuracy and writes the epoch metrics.
"""

from __future__ import annotations

import logging
import math
import resource
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis
import torch
import torch.nn.functional as F

from .config import WIRE_CODECS
from .data import Dataset, batch_indices, load_dataset
from .errors import ConfigError, PayloadError, ProtocolError, RunAborted, StageTimeout, TrainingDiverged
from .events import EventLog
from .messages import BACKWARD_KINDS, FORWARD_KINDS, Msg, encode_header, parse_header
from .model import Shard, layer_specs
from .runspec import RunSpec
from .saved import SavedTensorMeter
from .schedule import SCHEDULES
from .settings import Settings
from .streams import HEARTBEAT_S, Abort, Receiver, Sender, stream_key
from .training import EpochStats, make_optimizer, pick_device
from .wire import decode, encode, raw_nbytes

__all__ = ["StageRunner", "read_weights", "run_stage"]

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 0.5


@dataclass
class Timers:
    compute_s: float = 0.0
    codec_s: float = 0.0
    wait_s: float = 0.0
    send_s: float = 0.0
    bytes_raw: int = 0
    bytes_wire: int = 0
    messages: int = 0
    # Most micro-batches whose activations this stage held at once (the schedule's bound).
    max_in_flight: int = 0
    # Most bytes autograd kept for backward at once (arceus.saved): what the schedule bounds.
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
            "peak_rss_mb": _peak_rss_mb(),
        }


class StageRunner:
    def __init__(
        self,
        spec: RunSpec,
        stage: int,
        r: redis.Redis,
        settings: Settings,
        data: Dataset | None = None,
        model: Shard | None = None,
    ) -> None:
        self.spec, self.stage, self.r, self.settings = spec, stage, r, settings
        shard = spec.stages[stage]
        self.first, self.last = stage == 0, stage == spec.num_stages - 1
        self.who = f"stage {stage} (layers [{shard.start_layer}, {shard.end_layer}))"
        check_message_sizes(spec, settings)
        # A worker passes the shard it holds in memory, on the device it chose; otherwise
        # build the shard from the seed on the run's device.
        if model is None:
            self.device = pick_device(spec.device_for(stage))
            model = Shard(layer_specs(spec.job.model), shard.start_layer, shard.end_layer, spec.train.seed)
        elif (model.start, model.end) != (shard.start_layer, shard.end_layer):
            raise ConfigError("plan", f"{self.who} was given a shard of layers [{model.start}, {model.end})")
        else:
            self.device = next(model.parameters()).device
        self.model = model.to(self.device)
        self.opt = make_optimizer(self.model.parameters(), spec.train)
        self.saved = SavedTensorMeter(self.model.parameters())
        self.codec = WIRE_CODECS[spec.train.wire]
        self.schedule = SCHEDULES[spec.train.schedule]
        self.abort = Abort(r, spec.prefix)
        self.events = EventLog(r, spec.prefix)
        self.timers = Timers()
        self.data = data
        if self.first and self.data is None:
            self.data = load_dataset(spec.job.dataset, settings.data_dir, settings.download)
        if self.first and self.data.num_features != self.model.in_features:
            raise ConfigError(
                "model_config.layer_sizes[0]",
                f"dataset {spec.job.dataset.name} has {self.data.num_features} features per sample "
                f"but layer 0 takes {self.model.in_features}",
            )
        p, t, w = spec.prefix, settings.recv_timeout_s, settings.stream_window
        self.fwd_in = None if self.first else Receiver(r, stream_key(p, "fwd", stage), t, self.abort, self.who)
        self.bwd_in = None if self.last else Receiver(r, stream_key(p, "bwd", stage), t, self.abort, self.who)
        # Sends do not wait for Redis and receives are read ahead (arceus.streams), so the
        # stage computes while its neighbours' messages travel.
        self.fwd_out = None if self.last else Sender(r, stream_key(p, "fwd", stage + 1), w, t, self.abort, self.who)
        self.bwd_out = None if self.first else Sender(r, stream_key(p, "bwd", stage - 1), w, t, self.abort, self.who)

    # ----------------------------------------------------------------- main loop
    def run(self) -> None:
        stop_beating = threading.Event()
        beater = threading.Thread(target=self._heartbeat, args=(stop_beating,), daemon=True, name="arceus-heartbeat")
        try:
            self.abort.beat(self.stage)
            beater.start()
            self.events.emit("stage_started", stage=self.stage, device=str(self.device), who=self.who)
            self._wait_for_all_stages()
            self.abort.watch([s for s in range(self.spec.num_stages) if s != self.stage])
            self.timers = Timers()
            self._loop()
            self._flush_sends()
            self._publish_weights()
            stop_beating.set()
            beater.join()
            self.abort.beat(self.stage, finished=True)
            self.events.emit("stage_done", stage=self.stage)
        except BaseException as e:
            reason = f"{self.who}: {type(e).__name__}: {e}"
            if not isinstance(e, RunAborted):  # an abort's reason is already the first cause
                self.abort.set(reason)
            self.events.emit("error", stage=self.stage, reason=self.abort.reason() or reason)
            raise
        finally:
            stop_beating.set()
            for link in (self.fwd_out, self.bwd_out, self.fwd_in, self.bwd_in):
                if link is not None:
                    try:
                        link.close()
                    except Exception as e:  # noqa: BLE001 - the run's outcome is already decided
                        log.warning("%s: closing %s: %s: %s", self.who, link.key, type(e).__name__, e)

    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                self.abort.beat(self.stage)
            except redis.RedisError as e:  # the main loop will hit the same error and report it
                log.warning("%s: heartbeat failed: %s", self.who, e)

    def _wait_for_all_stages(self) -> None:
        """A barrier, so epoch 1's figures do not include a neighbour importing torch or loading data."""
        key = f"{self.spec.prefix}:ready"
        self.r.incr(key)
        deadline = time.monotonic() + self.settings.recv_timeout_s
        while int(self.r.get(key) or 0) < self.spec.num_stages:
            self.abort.check()
            if time.monotonic() > deadline:
                raise StageTimeout(f"{self.who} waited {self.settings.recv_timeout_s:.0f}s for the other stages")
            time.sleep(0.01)

    def _loop(self) -> None:
        msgs = self._dataset_source() if self.first else self._stream_source()
        train_stats, val_stats = EpochStats(), EpochStats()
        last_progress, last_check = 0.0, time.monotonic()  # the first step reports at once
        for msg in msgs:
            if time.monotonic() - last_check > HEARTBEAT_S:  # a busy stage notices a stop too
                last_check = time.monotonic()
                self.abort.check()
            h = msg.header
            kind = h["kind"]
            if kind == "train":
                step_stats = self._train_step(msg, msgs)
                if self.last:
                    train_stats.merge(step_stats)
                    if time.monotonic() - last_progress > PROGRESS_EVERY_S:
                        last_progress = time.monotonic()
                        self.events.emit(
                            "progress", epoch=h["epoch"] + 1, step=h["i"] + 1, steps=h["steps"],
                            loss=step_stats.loss, accuracy=step_stats.accuracy, samples=train_stats.samples,
                        )  # fmt: skip
            elif kind == "eval":
                self._eval_batch(msg, val_stats)
            else:
                if not self.last:
                    self._send(self.fwd_out, h, None, None, f"marker {kind}")
                if kind == "epoch_end":
                    self.events.emit("stage", stage=self.stage, epoch=h["epoch"] + 1, **self.timers.snapshot())
                    self.timers = Timers()
                elif kind == "eval_end":
                    if self.last:
                        self._emit_epoch(h, train_stats, val_stats)
                    train_stats, val_stats = EpochStats(), EpochStats()
                    self.timers = Timers()
                elif kind == "end":
                    return

    def _emit_epoch(self, h: dict, train: EpochStats, val: EpochStats) -> None:
        secs = h["train_seconds"]
        self.events.emit(
            "epoch", epoch=h["epoch"] + 1, epochs=self.spec.train.epochs,
            train_loss=train.loss, train_accuracy=train.accuracy, val_loss=val.loss, val_accuracy=val.accuracy,
            samples_per_s=train.samples / secs if secs > 0 else 0.0, seconds=secs, samples=train.samples,
        )  # fmt: skip

    # ----------------------------------------------------------------- sources
    def _dataset_source(self) -> Iterator[Msg]:
        data, ds, train = self.data, self.spec.job.dataset, self.spec.train
        step = 0
        for epoch in range(train.epochs):
            t0 = time.perf_counter()
            batches = batch_indices(len(data.train_y), ds.batch_size, train.seed, epoch)
            for i, (x, y) in enumerate(_prefetched(data, batches)):  # (B, F), (B,)
                m = min(train.micro_batches, len(y))
                for mb, (xm, ym) in enumerate(zip(x.tensor_split(m), y.tensor_split(m), strict=True)):
                    head = {"kind": "train", "epoch": epoch, "step": step, "i": i, "steps": len(batches),
                            "mb": mb, "n_mb": m, "bs": len(y)}  # fmt: skip
                    yield Msg(head, xm.to(self.device), ym)
                step += 1
            secs = time.perf_counter() - t0
            yield Msg({"kind": "epoch_end", "epoch": epoch, "train_seconds": secs})
            for start in range(0, len(data.val_y), ds.val_batch_size):
                end = start + ds.val_batch_size
                yield Msg(
                    {"kind": "eval", "epoch": epoch}, data.val_x[start:end].to(self.device), data.val_y[start:end]
                )
            yield Msg({"kind": "eval_end", "epoch": epoch, "train_seconds": secs})
        yield Msg({"kind": "end"})

    def _stream_source(self) -> Iterator[Msg]:
        while True:
            msg = self._receive(self.fwd_in, FORWARD_KINDS, "forward activations")
            if msg.header["kind"] in ("train", "eval"):
                self._check_input(msg, self.model.in_features, msg.header.get("bs"))
            yield msg

    def _receive(self, rx: Receiver, kinds: tuple[str, ...], what: str) -> Msg:
        t0 = time.perf_counter()
        self._flush_sends()
        entry_id, fields = rx.recv(what)
        t1 = time.perf_counter()
        self.timers.wait_s += t1 - t0
        self.timers.messages += 1
        where = f"{self.who}: entry {entry_id.decode()} of {rx.key}"
        msg = Msg(parse_header(fields.get(b"h"), kinds, where), y_wire=fields.get(b"y"))
        if b"x" in fields:
            try:
                msg.x = decode(fields[b"x"], self.settings.max_payload_elements).to(self.device)
            except PayloadError as e:
                raise PayloadError(f"{where}: {e}") from e
        self.timers.codec_s += time.perf_counter() - t1
        return msg

    def _flush_sends(self) -> None:
        """Collect Redis's answers to our sends (before waiting on a neighbour, and at the end):
        an XADD Redis refused (out of memory, ...) fails the run now, not as a timeout elsewhere."""
        for tx in (self.fwd_out, self.bwd_out):
            if tx is not None:
                tx.flush()

    def _check_input(self, msg: Msg, width: int, max_rows: int | None) -> None:
        x = msg.x
        if x is None or x.dim() != 2 or x.shape[1] != width or not x.dtype.is_floating_point:
            got = "no tensor" if x is None else f"{x.dtype} {list(x.shape)}"
            raise ProtocolError(f"{self.who}: {msg.header['kind']} entry must carry a float (rows, {width}), got {got}")
        if max_rows is not None and x.shape[0] > max_rows:
            raise ProtocolError(f"{self.who}: micro-batch of {x.shape[0]} rows in a batch of {max_rows}")

    def _send(self, tx: Sender, header: dict, x: torch.Tensor | None, msg: Msg | None, what: str) -> None:
        t0 = time.perf_counter()
        fields = {"h": encode_header(header)}
        if x is not None:
            try:
                fields["x"] = encode(x, self.codec)
            except PayloadError as e:
                raise TrainingDiverged(
                    f"{what} are not finite ({e}): training diverged; lower learning_rate "
                    f"(now {self.spec.train.learning_rate})"
                ) from e
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
        """The micro-batch's labels, checked against its rows and the number of classes."""
        y = msg.y
        if y is None:
            if msg.y_wire is None:
                raise ProtocolError(f"{self.who}: {msg.header['kind']} entry arrived without labels")
            try:
                y = decode(msg.y_wire, self.settings.max_payload_elements)
            except PayloadError as e:
                raise PayloadError(f"{self.who}: labels: {e}") from e
            classes = self.model.out_features
            if (
                y.dim() != 1
                or len(y) != len(msg.x)
                or y.is_floating_point()
                or (len(y) and not 0 <= y.min() <= y.max() < classes)
            ):
                raise ProtocolError(
                    f"{self.who}: labels must be {len(msg.x)} integers in [0, {classes}), got {y.dtype} {list(y.shape)}"
                )
        return y.to(self.device, torch.long)

    # ----------------------------------------------------------------- compute
    def _train_step(self, first: Msg, msgs: Iterator[Msg]) -> EpochStats:
        h0 = first.header
        step, n_mb = h0["step"], h0["n_mb"]
        inputs: dict[int, torch.Tensor] = {}
        outputs: dict[int, torch.Tensor] = {}
        pending_stats: list[tuple[torch.Tensor, ...]] = []
        stats = EpochStats()
        for action in self.schedule(self.stage, self.spec.num_stages, n_mb):
            if action.op == "F":
                msg = first if action.mb == 0 else next(msgs)
                h = msg.header
                if h["kind"] != "train" or h["step"] != step or h["mb"] != action.mb or h["n_mb"] != n_mb:
                    raise ProtocolError(f"{self.who}: expected forward of step {step} micro-batch {action.mb}, got {h}")
                t0 = time.perf_counter()
                x = msg.x
                if not self.first:
                    x.requires_grad_(True)
                with self.saved.counting():
                    out = self.model(x)  # (b, out_features)
                    if self.last:
                        y = self._labels(msg)
                        loss_sum = F.cross_entropy(out, y, reduction="sum")
                if self.last:
                    pending_stats.append((out.detach(), y, loss_sum.detach()))  # counted after the sends
                    outputs[action.mb] = loss_sum / h["bs"]  # sums to the batch mean over micro-batches
                else:
                    outputs[action.mb] = out
                inputs[action.mb] = x
                self.timers.max_in_flight = max(self.timers.max_in_flight, len(inputs))
                self.timers.saved_peak_bytes = max(self.timers.saved_peak_bytes, self.saved.now)
                self.timers.compute_s += time.perf_counter() - t0
                if not self.last:
                    self._send(self.fwd_out, h, out.detach(), msg, "forward activations")
            elif action.op == "B":
                grad = None
                if not self.last:
                    g = self._receive(self.bwd_in, BACKWARD_KINDS, "gradients")
                    if g.header["step"] != step or g.header["mb"] != action.mb:
                        raise ProtocolError(
                            f"{self.who}: expected gradients of step {step} micro-batch {action.mb}, got {g.header}"
                        )
                    grad = g.x
                    want = outputs[action.mb].shape
                    if grad is None or grad.shape != want:
                        got = "none" if grad is None else list(grad.shape)
                        raise ProtocolError(f"{self.who}: gradient of shape {got} for an output of {list(want)}")
                t0 = time.perf_counter()
                outputs.pop(action.mb).backward(grad)
                x = inputs.pop(action.mb)
                self.timers.compute_s += time.perf_counter() - t0
                if not self.first:
                    self._send(self.bwd_out, {"kind": "grad", "step": step, "mb": action.mb}, x.grad, None, "gradients")
            else:  # STEP
                t0 = time.perf_counter()
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
                for logits, y, loss_sum in pending_stats:
                    stats.add(logits, y, loss_sum)
                self.timers.compute_s += time.perf_counter() - t0
                if self.last and not math.isfinite(stats.loss_sum):
                    raise TrainingDiverged(
                        f"the loss is {stats.loss_sum} at epoch {h0['epoch'] + 1} step {h0['i'] + 1}: "
                        f"training diverged; lower learning_rate (now {self.spec.train.learning_rate})"
                    )
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


def _peak_rss_mb() -> float:
    """This process's peak resident memory (a worker's covers every job it ran)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def check_message_sizes(spec: RunSpec, settings: Settings) -> None:
    """Refuse a run whose largest activation would exceed what a receiver may decode."""
    rows = max(spec.job.dataset.batch_size, spec.job.dataset.val_batch_size)
    width = max(spec.job.model.layer_sizes)
    if rows * width > settings.max_payload_elements:
        raise ConfigError(
            "dataset_config.val_batch_size",
            f"a batch of {rows} rows x {width} features = {rows * width} values exceeds the payload limit of "
            f"{settings.max_payload_elements}; use smaller batches",
        )


def _prefetched(data: Dataset, batches: list[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Gather batch k+1 in a thread while batch k trains: a random gather from a large
    dataset is memory-bound and would otherwise sit on the pipeline's critical path."""

    def gather(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return data.train_x[idx], data.train_y[idx]

    with ThreadPoolExecutor(1, thread_name_prefix="arceus-prefetch") as pool:
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
    """Entry point of a stage process (the local cluster runs one per stage)."""
    if threads:
        torch.set_num_threads(threads)
    spec = RunSpec.from_dict(spec_dict)
    r = redis.Redis.from_url(redis_url)
    try:
        StageRunner(spec, stage, r, settings).run()
    finally:
        r.close()
