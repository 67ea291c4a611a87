"""Plans on unequal devices: the equal-layer plan, the FLOP-balanced plan and the speed-aware plan.

    sudo python -m bench.hetero [--model wide cnn] [--slow 0 1 2] [--epochs 3] [--repeats 2]

Three "devices" on this machine, each a CPU cgroup: two at 75% of a core and one at 37.5%
(half speed), 1.875 cores in all, so none of them waits for a core another one holds. Each
device's speed is measured the way a worker measures it as it registers
(``engine.device.matmul_gflops``, 1 thread, inside its cgroup), one device at a time. Then the
model trains with each plan, every stage a process of its own in its device's cgroup:

- equal: ``partition``'s equal layer counts, devices in their order;
- balanced: ``plan`` without speeds (the slowest stage's FLOPs is the least it can be);
- aware: ``plan`` with the measured speeds (the slowest stage's time; it also orders devices);
- measured: ``aware``, with each unit's cost measured (``engine.unitcost.measure``, run in this
  process, outside the cgroups) instead of its FLOPs.

``--slow`` says which of the three devices is the slow one (each value is a separate case),
since a speed-blind plan's cost depends on where the slow device happens to be. Prints
samples/s (median epoch, median over repeats), each plan against equal and balanced, and
for the aware plan each stage's expected compute time beside the measured one. Needs root
(cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``). The cgroups are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arceus.config import JobConfig, TrainConfig
from arceus.engine import unitcost
from arceus.launch.redis_server import redis_for
from arceus.plan.partition import assign, partition, plan, units
from arceus.plan.runspec import RunSpec

from .common import median_rate, synthetic_mnist

PERIOD_US = 100_000
FAST, SLOW = 0.75, 0.375  # of a core
WIDE = {"model_config": {"layer_sizes": [784, 2048, 2048, 2048, 10]},
        "dataset_config": {"name": "MNIST", "batch_size": 256, "val_batch_size": 1000}}  # fmt: skip
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class CpuGroup:
    """A CPU cgroup with a quota of ``share`` of one core; processes started by ``popen`` run in it."""

    def __init__(self, name: str, share: float) -> None:
        v2 = Path("/sys/fs/cgroup")
        if "cpu" in (v2 / "cgroup.controllers").read_text().split() if (v2 / "cgroup.controllers").exists() else ():
            self.path = v2 / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{int(share * PERIOD_US)} {PERIOD_US}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(int(share * PERIOD_US)))
        self.share = share

    def popen(self, cmd: list[str], **kw) -> subprocess.Popen:
        # The shell joins the group, then becomes the command: it runs throttled from its first instruction.
        script = f'echo $$ > {self.path / "cgroup.procs"} && exec "$@"'
        return subprocess.Popen(["sh", "-c", script, "sh", *cmd], text=True, **kw)

    def delete(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def measure_gflops(group: CpuGroup) -> float:
    code = ("import torch; torch.set_num_threads(1); from arceus.engine.device import matmul_gflops; "
            "print(matmul_gflops(torch.device('cpu'), 2.0))")  # fmt: skip
    out, _ = group.popen([sys.executable, "-c", code], stdout=subprocess.PIPE).communicate(timeout=120)
    return float(out.strip().splitlines()[-1])


def run(spec: RunSpec, order: list[int], groups: list[CpuGroup], url: str, data_dir: Path, tmp: Path) -> dict:
    """Every stage in its own process, stage s in the cgroup of device ``order[s]``."""
    spec_file = tmp / f"spec-{spec.run_id}.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    env = {**os.environ, "ARCEUS_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "bench.lan_stage", str(spec_file)]
    procs = [groups[d].popen([*cmd, str(s), url], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for s, d in enumerate(order)]  # fmt: skip
    outs = [p.communicate(timeout=1800) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            raise RuntimeError(f"stage failed: {err[-2000:]}")
    rows = [json.loads(line) for line in outs[-1][0].splitlines() if line.startswith("{")]
    epochs = [r for r in rows if r["type"] == "epoch"]
    last = epochs[-1]
    steps = last["samples"] / spec.job.dataset.batch_size
    compute_ms = {r["stage"]: r["compute_s"] / steps * 1e3 for r in rows
                  if r["type"] == "stage" and r["epoch"] == last["epoch"]}  # fmt: skip
    return {"samples_per_s": median_rate(epochs), "val_accuracy": last["val_accuracy"], "compute_ms": compute_ms}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", choices=["wide", "cnn"], default=["wide"])
    p.add_argument("--slow", type=int, nargs="+", default=[0, 1, 2], help="which device is the slow one")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--samples", type=int, default=12_800, help="training samples (synthetic MNIST)")
    args = p.parse_args()
    settings = synthetic_mnist(args.samples, 1000)
    tmp = Path(tempfile.mkdtemp(prefix="arceus-hetero-"))
    rows = []
    for model in args.model:
        raw = WIDE if model == "wide" else json.loads((EXAMPLES / "cnn_mnist.json").read_text())
        job = JobConfig.parse(raw)
        rows_per_batch = job.dataset.batch_size
        costs = unitcost.measure(job)
        if costs is None:
            raise SystemExit(f"{model}: timing its units took over {unitcost.BUDGET_S}s")
        for slow in args.slow:
            shares = [SLOW if d == slow else FAST for d in range(3)]
            groups = [CpuGroup(f"arceus-bench-dev{d}", share) for d, share in enumerate(shares)]
            try:
                gflops = [measure_gflops(g) for g in groups]
                ids = [0, 1, 2]
                plans = {
                    "equal": assign(job.layers, partition(len(units(job.layers)), 3), ids, rows_per_batch),
                    "balanced": plan(job.layers, ids, rows=rows_per_batch),
                    "aware": plan(job.layers, ids, rows=rows_per_batch, gflops=gflops),
                    "measured": plan(job.layers, ids, rows=rows_per_batch, gflops=gflops, unit_costs=costs),
                }
                # A plan with speeds carries its own estimates; the others are estimated by FLOPs.
                expected = {name: [s.expected_ms or s.flops * rows_per_batch / (gflops[s.device_id] * 1e9) * 1e3
                                   for s in shards] for name, shards in plans.items()}  # fmt: skip
                print(f"{model}, slow device {slow}: measured GFLOP/s {[round(g, 1) for g in gflops]}", flush=True)
                for name, shards in plans.items():
                    print(f"  {name:9s} " + "  ".join(
                        f"[{s.start_layer},{s.end_layer}) on dev{s.device_id} ~{e:.1f} ms"
                        for s, e in zip(shards, expected[name], strict=True)), flush=True)  # fmt: skip
                with redis_for(settings) as url:
                    for rep in range(args.repeats):
                        for name, shards in plans.items():
                            train = TrainConfig(epochs=args.epochs, micro_batches=4, wire="fp32", learning_rate=0.05)
                            spec = RunSpec.new(job, train, 3, stages=shards)
                            res = run(spec, [s.device_id for s in shards], groups, url, settings.data_dir, tmp)
                            rows.append({"model": model, "slow": slow, "plan": name, "rep": rep, "gflops": gflops,
                                         "expected_ms": expected[name], **res})  # fmt: skip
                            print(f"    rep {rep} {name:9s} {res['samples_per_s']:8,.0f} samples/s", flush=True)
            finally:
                for g in groups:
                    g.delete()
    print(json.dumps(rows, indent=1))
    summarize(rows)


def summarize(rows: list[dict]) -> None:
    print(f"\n{'model':6s} {'slow':>4s} {'plan':9s} {'samples/s':>10s} {'vs equal':>8s} {'vs balanced':>11s} "
          f"{'vs aware':>8s}  expected / measured compute ms a batch, per stage")  # fmt: skip
    for model, slow in dict.fromkeys((r["model"], r["slow"]) for r in rows):
        mine = {name: [r for r in rows if (r["model"], r["slow"], r["plan"]) == (model, slow, name)]
                for name in ("equal", "balanced", "aware", "measured")}  # fmt: skip
        med = {name: statistics.median(r["samples_per_s"] for r in got) for name, got in mine.items()}
        for name, got in mine.items():
            measured = [statistics.median(r["compute_ms"][str(s)] if str(s) in r["compute_ms"]
                                          else r["compute_ms"][s] for r in got) for s in range(3)]  # fmt: skip
            stages = ", ".join(f"{e:.0f}/{m:.0f}" for e, m in zip(got[0]["expected_ms"], measured, strict=True))
            print(
                f"{model:6s} {slow:>4d} {name:9s} {med[name]:10,.0f} {med[name] / med['equal']:8.2f} "
                f"{med[name] / med['balanced']:11.2f} {med[name] / med['aware']:8.2f}  {stages}"
            )


if __name__ == "__main__":
    main()
