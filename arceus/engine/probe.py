"""What a stage's links cost, measured where the stage runs: the legs its streams take, each codec.

A payload between two stages crosses two legs, sender -> Redis -> receiver (the cluster's Redis,
or the receiver's own). ``measure`` times the legs this stage's streams take, with payloads of
the stage's real activation size, and the encode and decode of those activations with every wire, on the
stage's torch device. ``plan.wires`` puts the reports of a link's two ends together and picks
the link's wire. Nothing here trains; it takes well under a second on a gigabit LAN, a few
seconds at 100 Mbit/s.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence

import redis
import torch

from .. import keys
from ..config import WIRE_CODECS, JobConfig
from ..plan.partition import StageAssignment
from ..settings import Settings
from ..wire import decode, encode, encode_parts
from .device import synchronize
from .resp import Connection
from .streams import run_client

__all__ = ["PROBE_MAX_BYTES", "measure"]

PROBE_MAX_BYTES = 1 << 20  # larger activations are timed at this size: a rate, not a transfer, is wanted
# Each figure is the fastest of REPEATS: what the link and the CPU can do; the slower ones are
# other processes taking the CPU or the network for a moment, which no wire choice changes.
REPEATS = 7


def measure(
    r: redis.Redis,
    job_id: str,
    job: JobConfig,
    shard: StageAssignment,
    device: torch.device,
    data_urls: Sequence[str | None] = (),
    socket_timeout_s: float = Settings.socket_timeout_s,
) -> dict:
    """The stage's report. The streams it reads live in its data Redis (``data_urls[stage]``) and
    those it writes in its neighbours', where they have one, else in ``r``: one Redis for all in
    the central layout, each receiver's own otherwise. The report has the rate it
    reads at (``down_mb_s``, from "in"), the rates it writes at (``up_next_mb_s``, ``up_prev_mb_s``)
    and the round trip to "in" (``rtt_ms``). Per boundary it sends and receives on ("in": from the
    stage before, "out": to the one after), per wire, it has the bytes of a batch's activations
    and the milliseconds to encode and to decode them."""
    rows = job.dataset.batch_size
    first, last = shard.start_layer == 0, shard.end_layer == len(job.layers)
    shapes = {}
    if not first:
        shapes["in"] = job.layers[shard.start_layer - 1].output.shape
    if not last:
        shapes["out"] = job.layers[shard.end_layer - 1].output.shape
    report: dict = {"codecs": {side: _codecs((rows, *shape), device) for side, shape in shapes.items()}}
    biggest = max((rows * math.prod(shape) * 4 for shape in shapes.values()), default=0)
    if not biggest:
        return report
    nbytes = min(biggest, PROBE_MAX_BYTES)
    where = {"in": shard.stage}
    if not last:
        where["next"] = shard.stage + 1
    if not first:
        where["prev"] = shard.stage - 1
    legs: dict[str | None, dict] = {}  # by Redis: the central layout times one leg, not three
    for name, stage in where.items():
        url = data_urls[stage] if stage < len(data_urls) else None
        if url not in legs:
            client = r if url is None else run_client(url, socket_timeout_s)
            try:
                legs[url] = _leg(client, job_id, shard.stage, nbytes)
            finally:
                if client is not r:
                    client.close()
        if name == "in":
            report.update(rtt_ms=legs[url]["rtt_ms"], down_mb_s=legs[url]["down_mb_s"])
        else:
            report[f"up_{name}_mb_s"] = legs[url]["up_mb_s"]
    report["probe_bytes"] = nbytes
    return report


def _best_s(fn: Callable[[], object]) -> float:
    fn()  # warm: allocations, kernels, a connection
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _codecs(shape: tuple[int, ...], device: torch.device) -> dict:
    # Activations are roughly normal; the int8 codec's cost does not depend on the values anyway.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    out = {}
    for wire, codec in WIRE_CODECS.items():
        data = encode(x, codec)
        out[wire] = {
            "bytes": len(data),
            "encode_ms": round(_best_s(functools.partial(encode_parts, x, codec)) * 1e3, 4),  # as links send
            "decode_ms": round(_best_s(functools.partial(_decode, data, device)) * 1e3, 4),
        }
    return out


def _decode(data: bytes, device: torch.device) -> None:
    decode(data).to(device)
    synchronize(device)


def _leg(r: redis.Redis, job_id: str, stage: int, nbytes: int) -> dict:
    """Round trip (PING) and rate each way (SET, GET of ``nbytes``), less the round trip, of this
    machine's connection to Redis, through the links' own connection (``engine.resp``)."""
    key, payload = keys.probe(job_id, stage), bytes(nbytes)
    conn = Connection(r)

    def call(*command: object) -> object:
        conn.send(command)
        return conn.read()

    try:
        rtt = _best_s(lambda: call("PING"))
        up = _best_s(lambda: call("SET", key, payload, "EX", 60))
        down = _best_s(lambda: call("GET", key))
    finally:
        conn.disconnect()
        r.delete(key)
    return {
        "rtt_ms": round(rtt * 1e3, 4),
        # Timing noise can make a tiny transfer cost less than the round trip: a rate is kept
        # below 100 GB/s, so it is never infinite.
        "up_mb_s": round(nbytes / max(up - rtt, nbytes / 1e11) / 1e6, 3),
        "down_mb_s": round(nbytes / max(down - rtt, nbytes / 1e11) / 1e6, 3),
    }
