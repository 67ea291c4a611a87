"""Stream entries between stages: a JSON header ``h``, a tensor payload ``x``, labels ``y``.

Headers come from another process, possibly another machine: every field is checked
here, so a malformed entry fails with a ``ProtocolError`` that names the stream entry
and the field, never with a KeyError deep in the stage or a huge allocation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from ..config import MAX_BATCH
from ..errors import ProtocolError

__all__ = ["BACKWARD_KINDS", "FORWARD_KINDS", "Msg", "encode_header", "parse_header", "small_labels"]

FORWARD_KINDS = ("train", "eval", "epoch_end", "eval_end", "checkpoint", "end")
BACKWARD_KINDS = ("grad",)
# Integer fields each kind must carry: (name, largest allowed value).
_LIMIT = 1 << 40
_FIELDS: dict[str, tuple[tuple[str, int], ...]] = {
    "train": (("epoch", _LIMIT), ("step", _LIMIT), ("i", _LIMIT), ("steps", _LIMIT), ("mb", MAX_BATCH),
              ("n_mb", MAX_BATCH), ("bs", MAX_BATCH)),
    "grad": (("step", _LIMIT), ("mb", MAX_BATCH)),
    "eval": (("epoch", _LIMIT),),
    "epoch_end": (("epoch", _LIMIT),),
    "eval_end": (("epoch", _LIMIT),),
    "checkpoint": (("step", _LIMIT), ("epoch", _LIMIT), ("batch", _LIMIT), ("end_epoch", _LIMIT)),
    "end": (),
}  # fmt: skip
_SECONDS = ("epoch_end", "eval_end")


@dataclass
class Msg:
    header: dict
    x: torch.Tensor | None = None  # (b, features): the input of the receiving stage
    y: torch.Tensor | None = None  # (b,) labels, decoded only where needed (the last stage)
    y_wire: bytes | None = None  # labels as they travel; middle stages pass them on untouched


def encode_header(header: dict) -> bytes:
    return json.dumps(header, separators=(",", ":")).encode()


def parse_header(raw: bytes | None, kinds: tuple[str, ...], where: str) -> dict:
    if raw is None:
        raise ProtocolError(f"{where}: entry has no header field 'h'")
    try:
        h = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"{where}: header is not JSON: {e}") from None
    if not isinstance(h, dict) or h.get("kind") not in kinds:
        got = h.get("kind") if isinstance(h, dict) else h
        raise ProtocolError(f"{where}: header kind {got!r} is not one of {kinds}")
    for name, top in _FIELDS[h["kind"]]:
        v = h.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
            raise ProtocolError(f"{where}: header field {name!r} must be an integer in [0, {top}], got {v!r}")
    if h["kind"] == "train" and not (1 <= h["n_mb"] <= h["bs"] and h["mb"] < h["n_mb"] and h["i"] < h["steps"]):
        raise ProtocolError(f"{where}: inconsistent header {h} (need 1 <= n_mb <= bs, mb < n_mb, i < steps)")
    if h["kind"] in _SECONDS:
        s = h.get("train_seconds")
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1e9:
            raise ProtocolError(f"{where}: header field 'train_seconds' must be a number >= 0, got {s!r}")
    return h


def small_labels(y: torch.Tensor) -> torch.Tensor:
    """Class ids as they travel: a byte each when all fit one (up to 256 classes), instead of 8."""
    if y.dtype == torch.uint8:
        return y
    return y.to(torch.uint8) if len(y) and 0 <= int(y.min()) and int(y.max()) < 256 else y
