"""One pipeline stage: holds its shard and runs the schedule over its messages.

Every stage runs the same loop over messages. Stage 0's messages come from the dataset
(``engine.source``); the others' come from the forward stream (``engine.links``). A
message is a training micro-batch, an evaluation batch or a marker (``epoch_end``,
``eval_end``, ``end``) that each stage passes on, so stages learn the run's structure
from stage 0 in order, in band. A training step runs the schedule's actions, which are
plain data (``plan.schedule``): forward, backward, optimizer step. The last stage
computes the loss and accuracy and writes the epoch metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import redis
import torch

from ..blobs import put_blob
from ..errors import ConfigError, ProtocolError, RunAborted, TrainingDiverged
from ..events import EventLog
from ..keys import RUN_TTL_S
from ..liveness import HEARTBEAT_S, RunLiveness, lost_redis
from ..plan.runspec import RunSpec
from ..plan.schedule import SCHEDULES
from ..settings import Settings
from ..wire import encode
from .device import pick_device
from .gradnorm import GradNormExchange
from .links import StageLinks
from .messages import Msg
from .metrics import EpochReport, EpochStats, loss_sum_of
from .model import SeededDropout, Shard, build_shard, set_dropout_seed, set_dropout_step
from .optim import clip_to, grad_norms, make_optimizer
from .saved import SavedTensorMeter
from .source import check_batchnorm_rows, dataset_messages, training_data
from .state import encode_part, load_optimizer_state

__all__ = ["StageRunner"]

log = logging.getLogger(__name__)


@dataclass
class _Step:
    """What one training step keeps between its actions: inputs and outputs by micro-batch."""

    header: dict  # of its first micro-batch
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)  # the last stage's: each one's loss
    # (logits, labels, loss sum) of the last stage's micro-batches, counted once the step is taken.
    pending: list[tuple[torch.Tensor, ...]] = field(default_factory=list)


class StageRunner:
    def __init__(
        self,
        spec: RunSpec,
        stage: int,
        r: redis.Redis,
        settings: Settings,
        model: Shard | None = None,
        optimizer_state: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.spec, self.stage, self.r, self.settings = spec, stage, r, settings
        shard = spec.stages[stage]
        self.first, self.last = stage == 0, stage == spec.num_stages - 1
        self.who = f"stage {stage} (layers [{shard.start_layer}, {shard.end_layer}))"
        spec.check_message_sizes(settings.max_payload_elements)
        # A worker passes the shard it holds in memory, on the device it chose; otherwise
        # build the shard from the seed on the run's device.
        if model is None:
            model = build_shard(spec.job, shard.start_layer, shard.end_layer, spec.train.seed)
            model.to(pick_device(spec.device_for(stage)))
        elif (model.start, model.end) != (shard.start_layer, shard.end_layer):
            raise ConfigError("plan", f"{self.who} was given a shard of layers [{model.start}, {model.end})")
        self.model, self.device = model, next(model.parameters()).device
        self.opt = make_optimizer(model.parameters(), spec.train)
        if optimizer_state:  # where the job's last run or checkpoint left it
            load_optimizer_state(model, self.opt, optimizer_state)
        self.saved = SavedTensorMeter(model.parameters())
        self.schedule = SCHEDULES[spec.train.schedule]
        self.liveness, self.events = RunLiveness(r, spec.keys), EventLog(r, spec.keys)
        self.data = training_data(spec.job.dataset, settings, model.input) if self.first else None
        self.classes = spec.job.dataset.targets[-1]  # scores per prediction: classes, or 256 next bytes
        self.dropout = any(isinstance(m, SeededDropout) for m in model.modules())
        if self.dropout:
            set_dropout_seed(model, spec.train.seed)
        if self.first:
            check_batchnorm_rows(spec, len(self.data.train_y))
        self.links = StageLinks(r, spec, stage, settings, self.liveness, self.who, self.device)
        self.grad_norms = GradNormExchange(
            r, spec.keys, stage, spec.num_stages, self.liveness, settings.recv_timeout_s, self.who
        )

    # ----------------------------------------------------------------- main loop
    def run(self) -> None:
        finished = False
        try:
            with self.liveness.heartbeat(self.stage, self.who):
                sends = {} if self.last else {"wire": self.spec.wire(self.stage)}  # its link's, when "auto"
                self.events.emit("stage_started", stage=self.stage, device=str(self.device), who=self.who, **sends)
                # A barrier, so epoch 1's figures do not include a neighbour importing torch or loading data.
                self.liveness.wait_for_stages(self.spec.num_stages, self.settings.recv_timeout_s, self.who)
                self.liveness.watch([s for s in range(self.spec.num_stages) if s != self.stage])
                self.links.reset_metrics()
                self._loop()
                self.links.flush()
                self._publish_weights()
            finished = True
            self.events.emit("stage_done", stage=self.stage)
        except BaseException as e:
            reason = f"{self.who}: {type(e).__name__}: {e}"
            try:
                if lost_redis(e):  # not the stage's fault: the API recovers the run
                    self.liveness.lose(self.stage, reason)
                elif not isinstance(e, RunAborted):  # an abort's reason is already the first cause
                    self.liveness.abort(reason)
                self.events.emit("error", stage=self.stage, reason=self.liveness.reason() or reason)
            except redis.RedisError as lost:  # the run's Redis is gone too: the error is still this one
                log.warning("%s; the run could not be told (%s: %s)", reason, type(lost).__name__, lost)
            raise
        finally:
            self.links.close(finished)

    def _messages(self) -> Iterator[Msg]:
        if self.first:
            return dataset_messages(
                self.data, self.spec.job.dataset, self.spec.train, self.device, self.spec.start_step
            )
        return self.links.forward_messages(self.model.input)

    def _loop(self) -> None:
        msgs = self._messages()
        text = self.spec.job.dataset.name == "text"
        report = EpochReport(self.events, self.spec.train.epochs, text, self.spec.start_step)
        last_check, evaluated = time.monotonic(), 0
        for msg in msgs:
            if time.monotonic() - last_check > HEARTBEAT_S:  # a busy stage notices a stop too
                last_check = time.monotonic()
                self.liveness.check()
            h = msg.header
            kind = h["kind"]
            if kind == "train":
                step_stats = self._train_step(msg, msgs)
                if self.last:
                    report.train_step(h, step_stats)
            elif kind == "eval":
                self._eval_batch(msg, report.val)
            else:
                if kind == "end" and evaluated != self.spec.train.epochs:
                    # Only stage 0's source ends a run, after its last epoch: anything else is a
                    # forged or corrupt stream, and the run fails now, not at a neighbour's timeout.
                    raise ProtocolError(
                        f"{self.who}: the run was told to end after {evaluated} of its {self.spec.train.epochs} epochs"
                    )
                evaluated += kind == "eval_end"
                if not self.last:
                    self.links.send_forward(h, None, None, f"marker {kind}")
                if kind == "checkpoint":
                    self._save_part(h)
                    continue
                if kind == "epoch_end":
                    self.events.emit("stage", stage=self.stage, epoch=h["epoch"] + 1, **self.links.metrics.snapshot())
                elif kind == "eval_end" and self.last:
                    report.epoch_done(h)
                if kind == "end":
                    return
                self.links.reset_metrics()  # epoch_end and eval_end each close a period of figures

    # ----------------------------------------------------------------- compute
    def _train_step(self, first: Msg, msgs: Iterator[Msg]) -> EpochStats:
        step = _Step(first.header)
        for action in self.schedule(self.stage, self.spec.num_stages, first.header["n_mb"]):
            if action.op == "F":
                self._forward(step, first if action.mb == 0 else next(msgs), action.mb)
            elif action.op == "B":
                self._backward(step, action.mb)
            else:
                return self._optimizer_step(step)
        raise ProtocolError(f"{self.who}: schedule {self.spec.train.schedule!r} ended without an optimizer step")

    def _forward(self, step: _Step, msg: Msg, mb: int) -> None:
        h, h0 = msg.header, step.header
        if h["kind"] != "train" or h["step"] != h0["step"] or h["mb"] != mb or h["n_mb"] != h0["n_mb"]:
            raise ProtocolError(f"{self.who}: expected forward of step {h0['step']} micro-batch {mb}, got {h}")
        m = self.links.metrics
        t0 = time.perf_counter()
        x = msg.x
        if not self.first:
            x.requires_grad_(True)
        if not self.model.training:
            self.model.train()
        if self.dropout:
            set_dropout_step(self.model, h0["step"], mb)
        with self.saved.counting():
            out = self.model(x)  # (b, *output shape)
            if self.last:
                y = self.links.labels(msg, self.classes)
                loss_sum = loss_sum_of(out, y)
        if self.last:
            step.pending.append((out.detach(), y, loss_sum.detach()))  # counted after the sends
            # Sums to the batch's mean over its predictions (every position for text) over the micro-batches.
            step.outputs[mb] = loss_sum / (h["bs"] * y[0].numel())
        else:
            step.outputs[mb] = out
        step.inputs[mb] = x
        m.max_in_flight = max(m.max_in_flight, len(step.inputs))
        m.saved_peak_bytes = max(m.saved_peak_bytes, self.saved.now)
        m.compute_s += time.perf_counter() - t0
        if not self.last:
            self.links.send_forward(h, out.detach(), msg, "forward activations")

    def _backward(self, step: _Step, mb: int) -> None:
        grad = None
        if not self.last:
            grad = self.links.receive_gradient(step.header["step"], mb, step.outputs[mb].shape)
        t0 = time.perf_counter()
        step.outputs.pop(mb).backward(grad)
        x = step.inputs.pop(mb)
        self.links.metrics.compute_s += time.perf_counter() - t0
        if not self.first:
            self.links.send_gradient(step.header["step"], mb, x.grad)

    def _optimizer_step(self, step: _Step) -> EpochStats:
        stats = EpochStats()
        if self.spec.train.grad_clip > 0:
            self._clip(step)
        t0 = time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        for logits, y, loss_sum in step.pending:
            stats.add(logits, y, loss_sum)
        self.links.metrics.compute_s += time.perf_counter() - t0
        if self.last and not math.isfinite(stats.loss_sum):
            h0 = step.header
            raise TrainingDiverged(
                f"the loss is {stats.loss_sum} at epoch {h0['epoch'] + 1} step {h0['i'] + 1}: "
                f"training diverged; lower learning_rate (now {self.spec.train.learning_rate})"
            )
        return stats

    def _clip(self, step: _Step) -> None:
        """Clip by the global gradient norm: every stage's norms are exchanged through Redis."""
        mine = grad_norms(self.model.parameters())
        if not all(math.isfinite(n) for n in mine):
            raise TrainingDiverged(
                f"gradients are not finite at step {step.header['step']}: training diverged; "
                f"lower learning_rate (now {self.spec.train.learning_rate})"
            )
        t0 = time.perf_counter()
        norms = self.grad_norms.all_norms(step.header["step"], mine)
        self.links.metrics.wait_s += time.perf_counter() - t0
        clip_to(self.model.parameters(), norms, self.spec.train.grad_clip)

    @torch.no_grad()
    def _eval_batch(self, msg: Msg, stats: EpochStats) -> None:
        t0 = time.perf_counter()
        if self.model.training:
            self.model.eval()
        out = self.model(msg.x)
        if self.last:
            y = self.links.labels(msg, self.classes)
            stats.add(out, y, loss_sum_of(out, y))
        self.links.metrics.compute_s += time.perf_counter() - t0
        if not self.last:
            self.links.send_forward(msg.header, out, msg, "evaluation activations")

    def _save_part(self, h: dict) -> None:
        """This stage's part of the checkpoint at step ``h["step"]``, into Redis for the run's
        follower to write to the checkpoint store (``arceus.checkpoints``)."""
        t0 = time.perf_counter()
        meta = {"job_id": self.spec.job_id, "step": str(h["step"]), "stage": str(self.stage)}
        data = encode_part(self.model, self.opt, meta)
        put_blob(self.r, self.spec.keys.checkpoint_part(h["step"], self.stage), data, RUN_TTL_S)
        self.events.emit("checkpoint_part", stage=self.stage, step=h["step"], epoch=h["epoch"], batch=h["batch"],
                         end_epoch=h["end_epoch"], bytes=len(data), seconds=time.perf_counter() - t0)  # fmt: skip

    def _publish_weights(self) -> None:
        """Final parameters into the run's weights hash (lossless payloads), for tests and export."""
        state = {k: encode(v.detach().cpu(), "raw") for k, v in self.model.state_dict().items()}
        self.r.hset(self.spec.keys.weights, mapping=state)
