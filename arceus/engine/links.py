"""A stage's links to its neighbours: its stream ends, the wire codec, and their counters.

``StageLinks`` turns tensors into stream entries and back. Everything that arrives is
checked here (headers, payloads, shapes, labels), so a malformed entry fails with an
error naming the stage and the entry before the stage computes on it. It counts the
seconds spent waiting, coding and sending and the bytes sent, in ``metrics``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import redis
import torch

from ..config import WIRE_CODECS
from ..errors import LinkFailed, PayloadError, ProtocolError, TrainingDiverged
from ..liveness import HEARTBEAT_S, HEARTBEAT_TTL_S, RunLiveness
from ..plan.layers import SampleShape
from ..plan.runspec import RunSpec
from ..settings import Settings
from ..wire import decode, encode, encode_parts, raw_nbytes
from .messages import BACKWARD_KINDS, FORWARD_KINDS, Msg, encode_header, parse_header, small_labels
from .metrics import StageMetrics
from .streams import Receiver, Sender, run_client

__all__ = ["StageLinks"]

log = logging.getLogger(__name__)


class StageLinks:
    def __init__(
        self,
        r: redis.Redis,
        spec: RunSpec,
        stage: int,
        settings: Settings,
        liveness: RunLiveness,
        who: str,
        device: torch.device,
    ) -> None:
        self.who, self.device, self.max_elements = who, device, settings.max_payload_elements
        self.liveness = liveness
        # Each link has its own wire (``RunSpec.wire``): activations out and gradients back share it.
        self.codecs = {
            "fwd": None if stage == spec.num_stages - 1 else WIRE_CODECS[spec.wire(stage)],
            "bwd": None if stage == 0 else WIRE_CODECS[spec.wire(stage - 1)],
        }
        self.learning_rate = spec.train.learning_rate  # named in the advice when activations overflow
        self.metrics = StageMetrics()
        first, last = stage == 0, stage == spec.num_stages - 1
        run, t, w = spec.keys, settings.recv_timeout_s, settings.stream_window
        # A stream lives in its receiver's data Redis when the run has them (each payload then
        # crosses the network once, sender to receiver), else in the run's Redis.
        self._clients: dict[str, redis.Redis] = {}

        def into(s: int) -> redis.Redis:
            url = spec.data_url(s)
            return r if url is None else self._clients.setdefault(url, run_client(url, settings.socket_timeout_s))

        self.fwd_in = None if first else Receiver(into(stage), run.fwd(stage), t, liveness, who)
        self.bwd_in = None if last else Receiver(into(stage), run.bwd(stage), t, liveness, who)
        # Sends do not wait for Redis and receives are read ahead (engine.streams), so the
        # stage computes while its neighbours' messages travel.
        self.fwd_out = None if last else Sender(into(stage + 1), run.fwd(stage + 1), w, t, liveness, who)
        self.bwd_out = None if first else Sender(into(stage - 1), run.bwd(stage - 1), w, t, liveness, who)

    def reset_metrics(self) -> None:
        self.metrics = StageMetrics()

    # ----------------------------------------------------------------- receiving
    def forward_messages(self, sample: SampleShape) -> Iterator[Msg]:
        """The previous stage's entries, each batch checked to be floats of shape (rows, *sample)."""
        while True:
            msg = self._receive(self.fwd_in, FORWARD_KINDS, "forward activations")
            if msg.header["kind"] in ("train", "eval"):
                self._check_input(msg, sample.shape, msg.header.get("bs"))
            yield msg

    def receive_gradient(self, step: int, mb: int, shape: torch.Size) -> torch.Tensor:
        """The gradient of micro-batch ``mb``'s output, which must have ``shape``."""
        g = self._receive(self.bwd_in, BACKWARD_KINDS, "gradients")
        if g.header["step"] != step or g.header["mb"] != mb:
            raise ProtocolError(f"{self.who}: expected gradients of step {step} micro-batch {mb}, got {g.header}")
        if g.x is None or g.x.shape != shape:
            got = "none" if g.x is None else list(g.x.shape)
            raise ProtocolError(f"{self.who}: gradient of shape {got} for an output of {list(shape)}")
        return g.x

    def _receive(self, rx: Receiver, kinds: tuple[str, ...], what: str) -> Msg:
        t0 = time.perf_counter()
        self.flush(wait=False)
        try:
            entry_id, fields = rx.recv(what, on_wait=lambda: self.flush(wait=False))
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._link_lost(rx.key, e)
        t1 = time.perf_counter()
        self.metrics.wait_s += t1 - t0
        self.metrics.messages += 1
        where = f"{self.who}: entry {entry_id.decode()} of {rx.key}"
        msg = Msg(parse_header(fields.get(b"h"), kinds, where), y_wire=fields.get(b"y"))
        if b"x" in fields:
            try:
                msg.x = decode(fields[b"x"], self.max_elements).to(self.device)
            except PayloadError as e:
                raise PayloadError(f"{where}: {e}") from e
        self.metrics.codec_s += time.perf_counter() - t1
        return msg

    def _check_input(self, msg: Msg, shape: tuple[int, ...], max_rows: int | None) -> None:
        x = msg.x
        if x is None or tuple(x.shape[1:]) != shape or x.dim() != len(shape) + 1 or not x.dtype.is_floating_point:
            got = "no tensor" if x is None else f"{x.dtype} {list(x.shape)}"
            want = ", ".join(["rows", *map(str, shape)])
            raise ProtocolError(f"{self.who}: {msg.header['kind']} entry must carry a float ({want}), got {got}")
        if max_rows is not None and x.shape[0] > max_rows:
            raise ProtocolError(f"{self.who}: micro-batch of {x.shape[0]} rows in a batch of {max_rows}")

    def labels(self, msg: Msg, classes: int) -> torch.Tensor:
        """The micro-batch's labels, checked against its rows and the number of classes."""
        y = msg.y
        if y is None:
            if msg.y_wire is None:
                raise ProtocolError(f"{self.who}: {msg.header['kind']} entry arrived without labels")
            try:
                y = decode(msg.y_wire, self.max_elements)
            except PayloadError as e:
                raise PayloadError(f"{self.who}: labels: {e}") from e
            if not y.is_floating_point():
                y = y.long()  # compared with the class count below: 256 does not fit a uint8
            if (
                y.dim() not in (1, 2)
                or len(y) != len(msg.x)
                or y.is_floating_point()
                or (y.numel() and not 0 <= y.min() <= y.max() < classes)
            ):
                raise ProtocolError(
                    f"{self.who}: labels must be {len(msg.x)} {'rows of ' if y.dim() == 2 else ''}integers "
                    f"in [0, {classes}), got {y.dtype} {list(y.shape)}"
                )
        return y.to(self.device, torch.long)

    # ----------------------------------------------------------------- sending
    def send_forward(self, header: dict, x: torch.Tensor | None, msg: Msg | None, what: str) -> None:
        """Activations (or a marker, without ``x``) to the next stage, with ``msg``'s labels."""
        self._send(self.fwd_out, self.codecs["fwd"], header, x, msg, what)

    def send_gradient(self, step: int, mb: int, grad: torch.Tensor) -> None:
        self._send(self.bwd_out, self.codecs["bwd"], {"kind": "grad", "step": step, "mb": mb}, grad, None, "gradients")

    def _send(self, tx: Sender, codec: str, header: dict, x: torch.Tensor | None, msg: Msg | None, what: str) -> None:
        t0 = time.perf_counter()
        fields = {"h": encode_header(header)}
        if x is not None:
            try:
                head, body = encode_parts(x, codec)  # the body of fp32 is x's memory: sent below, unchanged
            except PayloadError as e:
                raise TrainingDiverged(
                    f"{what} are not finite ({e}): training diverged; lower learning_rate (now {self.learning_rate})"
                ) from e
            fields["x"] = (head, body)
            self.metrics.bytes_raw += raw_nbytes(x)
            self.metrics.bytes_wire += len(head) + len(body)
        if msg is not None and (msg.y is not None or msg.y_wire is not None):
            fields["y"] = msg.y_wire if msg.y_wire is not None else encode(small_labels(msg.y), "raw")
        t1 = time.perf_counter()
        self.metrics.codec_s += t1 - t0
        try:
            tx.send(fields, what)
        except (redis.ConnectionError, redis.TimeoutError) as e:
            self._link_lost(tx.key, e)
        self.metrics.send_s += time.perf_counter() - t1
        self.metrics.messages += 1

    def flush(self, wait: bool = True) -> None:
        """Collect Redis's answers to our sends: those already here before each receive (a reply
        comes once its payload is across; waiting for it there would hold the stage up for the
        transfer), all of them at the end. An XADD Redis refused (out of memory, ...) fails the
        run then, not as a timeout elsewhere."""
        for tx in (self.fwd_out, self.bwd_out):
            if tx is not None:
                try:
                    tx.flush(wait)
                except (redis.ConnectionError, redis.TimeoutError) as e:
                    self._link_lost(tx.key, e)

    def _link_lost(self, key: str, error: Exception) -> None:
        """A stream's Redis stopped answering. Where streams live next to their receivers, that is
        a neighbour's machine going away: its stage's heartbeat (in the run's Redis) expires
        within ``HEARTBEAT_TTL_S``, and this stage stops as a lost-device run does (``RunAborted``),
        for a recovery to resume. A Redis that fails while every stage beats is the run's error."""
        deadline = time.monotonic() + HEARTBEAT_TTL_S + 2 * HEARTBEAT_S
        while time.monotonic() < deadline:
            self.liveness.check()  # RunAborted once the neighbour is presumed lost
            time.sleep(HEARTBEAT_S / 2)
        reason = f"{self.who}: the Redis of {key} stopped answering ({error}), and every stage still beats"
        raise LinkFailed(reason) from error

    def close(self, finished: bool = True) -> None:
        """Close every link; one that fails is logged, since the run's outcome is already decided.
        A run that did not finish also drops the streams this stage sent into (``Sender.close``)."""
        for link in (self.fwd_out, self.bwd_out, self.fwd_in, self.bwd_in):
            if link is not None:
                try:
                    if isinstance(link, Sender):
                        link.close(drop=not finished)
                    else:
                        link.close()
                except Exception as e:  # noqa: BLE001
                    log.warning("%s: closing %s: %s: %s", self.who, link.key, type(e).__name__, e)
        for client in self._clients.values():
            client.close()
