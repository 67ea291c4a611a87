"""Each link's wire, chosen from what its two ends measured (plain data, no torch).

Link ``s`` joins stage ``s`` to stage ``s + 1``. Each batch it carries the activations forward
and gradients of the same size back. Each one is encoded at one end, written into the Redis that
holds the stream (the run's, or the receiver's own), read out of it at the far end, and decoded.
``engine.probe`` measures every term of that at each stage: the rates it writes and reads at,
and the encode and decode times of each wire. A link takes
the wire with the least total. On loopback or a fast LAN that is fp32, since encoding costs
more than the bytes it saves. On a slow link, the bytes cost more, and int8 wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from .partition import StageAssignment

__all__ = ["CANDIDATES", "FALLBACK", "choose", "link_ms"]

# Most precise first. fp16 is not among them: its fixed range flushes the small gradients of a
# mean loss (below 6e-5 it loses digits, below 6e-8 it is zero), where int8's block scales keep
# each block's own range. A run can still ask for fp16 by name.
CANDIDATES = ("fp32", "int8")
# A less precise wire is taken only when it is this much faster than the most precise one
# within reach: closer than that is within what a probe resolves, and precision wins.
MARGIN = 0.9
FALLBACK = "int8"  # an "auto" link nobody measured (a plan from before links were measured)


def _transfer_ms(mb_s: float, nbytes: int) -> float:
    return nbytes / (max(mb_s, 1e-3) * 1e6) * 1e3  # a rate reported as 0 is a very slow one


def link_ms(sender: dict, receiver: dict, wire: str) -> float:
    """Milliseconds, estimated, to move one batch's activations over the link and its gradients
    back with ``wire``: the codec at both ends, and each way the writer's leg into the stream's
    Redis and the reader's leg out of it."""
    out, into = sender["codecs"]["out"][wire], receiver["codecs"]["in"][wire]
    forward = (
        out["encode_ms"]
        + _transfer_ms(sender["up_next_mb_s"], out["bytes"])
        + _transfer_ms(receiver["down_mb_s"], out["bytes"])
        + into["decode_ms"]
    )
    backward = (
        into["encode_ms"]
        + _transfer_ms(receiver["up_prev_mb_s"], into["bytes"])
        + _transfer_ms(sender["down_mb_s"], into["bytes"])
        + out["decode_ms"]
    )
    return forward + backward


def choose(stages: Sequence[StageAssignment], reports: Sequence[dict]) -> list[StageAssignment]:
    """``stages`` with each link's choice in its sending stage's ``link``: the wire, why, and the
    estimate for every candidate. ``reports[i]`` is stage i's ``engine.probe.measure``."""
    out = []
    for s, shard in enumerate(stages):
        if s == len(stages) - 1:
            out.append(replace(shard, link=None))
            continue
        a, b = reports[s], reports[s + 1]
        ms = {w: link_ms(a, b, w) for w in CANDIDATES}
        fastest = min(ms.values())
        wire = next(w for w in CANDIDATES if fastest >= MARGIN * ms[w])
        size = {w: a["codecs"]["out"][w]["bytes"] for w in CANDIDATES}
        if wire == "fp32":
            why = "encoding would cost more time than the bytes it saves"
        else:
            why = f"the link is the bottleneck: {size['fp32'] / size[wire]:.1f}x fewer bytes than fp32"
        others = ", ".join(f"{w} {ms[w]:.2f} ms" for w in CANDIDATES if w != wire)
        legs = (
            f"stage {s} writes at {a['up_next_mb_s']:,.0f} MB/s and reads at {a['down_mb_s']:,.0f}; "
            f"stage {s + 1} writes at {b['up_prev_mb_s']:,.0f} and reads at {b['down_mb_s']:,.0f}"
        )
        reason = f"{why}: {wire} {ms[wire]:.2f} ms a batch there and back ({others}); {legs}"
        link = {"to_stage": s + 1, "wire": wire, "reason": reason,
                "ms": {w: round(v, 3) for w, v in ms.items()}, "bytes": size}  # fmt: skip
        out.append(replace(shard, link=link))
    return out
