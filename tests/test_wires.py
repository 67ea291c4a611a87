"""Each link's wire: what a stage measures (engine.probe, on a real Redis) and the choice (plan.wires)."""

import dataclasses

import redis
import torch

from arceus.config import SEED_JOB, JobConfig, TrainConfig
from arceus.engine.probe import measure
from arceus.launch.redis_server import EmbeddedRedis
from arceus.plan import wires
from arceus.plan.partition import plan
from arceus.plan.runspec import RunSpec

JOB = JobConfig.parse(SEED_JOB)  # 784-128-64-10, batch 256


def test_a_stage_measures_its_leg_and_each_wire_on_its_boundaries(r):
    stages = plan(JOB.layers, 3)
    reports = [measure(r, "probejob", JOB, s, torch.device("cpu")) for s in stages]
    # Stage 0 only sends activations, the last only receives them; the middle does both.
    assert [sorted(rep["codecs"]) for rep in reports] == [["out"], ["in", "out"], ["in"]]
    widths = {"out": [128, 64, None], "in": [None, 128, 64]}
    for s, rep in enumerate(reports):
        for side, costs in rep["codecs"].items():
            values = 256 * widths[side][s]
            assert set(costs) == {"fp32", "fp16", "int8"}
            # Each wire's real payload: a header, then 4, 2 or ~1.1 bytes a value (int8 adds block scales).
            assert values * 4 < costs["fp32"]["bytes"] < values * 4 + 64
            assert values * 2 < costs["fp16"]["bytes"] < values * 2 + 64
            assert values < costs["int8"]["bytes"] < values * 1.2
            assert all(c["encode_ms"] > 0 and c["decode_ms"] > 0 for c in costs.values())
        # The leg to Redis, timed with a payload of the stage's largest fp32 activations.
        assert rep["probe_bytes"] == 256 * max(w for w in (widths["in"][s], widths["out"][s]) if w) * 4
        # Stage 0 writes only forward, the last only backward; all read. Central: one Redis for all.
        ups = {"up_next_mb_s"} if s == 0 else {"up_prev_mb_s"} if s == 2 else {"up_next_mb_s", "up_prev_mb_s"}
        assert {k for k in rep if k.startswith("up_")} == ups
        assert rep["rtt_ms"] > 0 and rep["down_mb_s"] > 0 and all(rep[k] > 0 for k in ups)
    assert not list(r.scan_iter("arceus:job:probejob:*"))  # the probe payloads are gone


def test_with_data_redis_a_stage_times_the_legs_its_streams_take(r):
    """Per-receiver layout: stage 0 writes into stage 1's data Redis and reads from its own."""
    stages = plan(JOB.layers, 2)
    r.config_resetstat()
    with EmbeddedRedis(password="probe-0") as mine, EmbeddedRedis(password="probe-1") as theirs:
        report = measure(r, "probejob", JOB, stages[0], torch.device("cpu"), [mine.url, theirs.url])
        servers = {"mine": mine, "theirs": theirs}
        timed = {name: redis.Redis.from_url(server.url).info("commandstats") for name, server in servers.items()}
    # Each leg: a warm-up and 7 timed SETs and GETs, on the Redis of the streams it stands for.
    assert timed["mine"]["cmdstat_set"]["calls"] == timed["theirs"]["cmdstat_set"]["calls"] == 8
    assert report["down_mb_s"] > 0 and report["up_next_mb_s"] > 0 and "up_prev_mb_s" not in report
    assert "cmdstat_set" not in r.info("commandstats")  # the run's Redis carried none of it


def _report(mb_s: float, encode_ms: dict, decode_ms: dict, sides=("in", "out")) -> dict:
    sizes = {"fp32": 131_091, "fp16": 65_556, "int8": 36_884}  # a batch of 256 x 128, as measured
    costs = {w: {"bytes": sizes[w], "encode_ms": encode_ms[w], "decode_ms": decode_ms[w]} for w in sizes}
    return {"rtt_ms": 0.05, "up_next_mb_s": mb_s, "up_prev_mb_s": mb_s, "down_mb_s": mb_s,
            "codecs": {side: costs for side in sides}}  # fmt: skip


CHEAP = {"fp32": 0.01, "fp16": 0.02, "int8": 0.15}  # encode or decode, ms, on a fast CPU


def test_a_fast_link_sends_fp32_and_a_slow_one_int8():
    stages = plan(JOB.layers, 2)
    fast = [_report(2000, CHEAP, CHEAP, ("out",)), _report(2000, CHEAP, CHEAP, ("in",))]
    chosen = wires.choose(stages, fast)
    assert chosen[0].link["wire"] == "fp32" and chosen[1].link is None
    assert chosen[0].link["to_stage"] == 1
    assert chosen[0].link["reason"].startswith("encoding would cost more time than the bytes it saves: fp32")
    # 100 Mbit/s each leg: a batch of fp32 takes ~42 ms there and back, int8 ~12 ms.
    slow = [_report(12.5, CHEAP, CHEAP, ("out",)), _report(12.5, CHEAP, CHEAP, ("in",))]
    link = wires.choose(stages, slow)[0].link
    assert link["wire"] == "int8", link
    assert link["reason"].startswith("the link is the bottleneck: 3.6x fewer bytes than fp32")
    assert link["ms"]["int8"] < link["ms"]["fp32"] and set(link["ms"]) == set(link["bytes"]) == {"fp32", "int8"}
    assert link["bytes"] == {"fp32": 131_091, "int8": 36_884}


def test_a_near_tie_goes_to_the_more_precise_wire():
    stages = plan(JOB.layers, 2)

    def ends(mb_s: float) -> list[dict]:
        return [_report(mb_s, CHEAP, CHEAP, ("out",)), _report(mb_s, CHEAP, CHEAP, ("in",))]

    def int8_saves(mb_s: float) -> float:
        return 1 - wires.link_ms(*ends(mb_s), "int8") / wires.link_ms(*ends(mb_s), "fp32")

    # The rate at which int8 saves 5% of fp32's time, by bisection: within what a probe resolves.
    lo, hi = 12.5, 10_000.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if int8_saves(mid) > 0.05 else (lo, mid)
    link = wires.choose(stages, ends(lo))[0].link
    assert 0.04 < int8_saves(lo) < 0.06 and link["wire"] == "fp32", link
    assert wires.choose(stages, ends(lo / 2))[0].link["wire"] == "int8"  # at half that rate, int8 is well ahead


def test_a_run_sends_its_own_wire_or_each_links_measured_one():
    measured = wires.choose(plan(JOB.layers, 3), [_report(12.5, CHEAP, CHEAP)] * 3)
    auto = RunSpec.new(JOB, TrainConfig(wire="auto"), 3, stages=measured)
    assert [auto.wire(0), auto.wire(1)] == ["int8", "int8"]
    assert RunSpec.new(JOB, TrainConfig(wire="fp16"), 3, stages=measured).wire(0) == "fp16"  # asked by name
    unmeasured = RunSpec.new(JOB, TrainConfig(wire="auto"), 3)  # a plan from before links were measured
    assert unmeasured.wire(1) == wires.FALLBACK
    # The choice travels with the plan (the job's record, a stage task's argument).
    again = RunSpec.from_dict(auto.to_dict())
    assert [s.link for s in again.stages] == [s.link for s in measured]
    assert dataclasses.asdict(again.stages[0])["link"]["wire"] == "int8"


def test_auto_is_the_default_wire_and_each_wire_is_kept_by_name():
    assert TrainConfig().wire == "auto"
    for wire in ("auto", "fp32", "fp16", "int8"):
        assert TrainConfig.parse({"wire": wire}).to_dict()["wire"] == wire
