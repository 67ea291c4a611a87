"""One commit against another on the seed job, interleaved, in one run.

    python -m bench.ab --base REV [--pairs 6] [--wire auto] [--micro-batches 1] [--stages 3]
                       [--epochs 4] [--synthetic 20000]

Checks ``REV`` out into a temporary git worktree and trains the seed job (784-128-64-10, batch
256, lr 0.1, local stage processes as ``arceus train`` starts them) alternately with that
tree's code and with this one's as it is on disk (uncommitted edits included), ``--pairs``
times, on the same synthetic MNIST-format set; which of the two runs first alternates.
Each run is a fresh process with its tree first on ``sys.path``; a run's figure is its median
samples/s over epochs 2..N. Prints every pair, the medians and their ratio: a change that moves
a step by a few percent shows here where separate runs on a shared machine would not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

# Runs inside one tree: that tree's arceus, in this process and in the stage processes it spawns.
_RUN = """
import json, sys
tree, data, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
sys.path.insert(0, tree)
from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local
from arceus.settings import Settings
settings = Settings.from_env(data_dir=data)
job = JobConfig(ModelConfig((784, 128, 64, 10)), DatasetConfig(name="MNIST", batch_size=256))
train = TrainConfig(epochs=args["epochs"], micro_batches=args["micro_batches"], wire=args["wire"])
with redis_for(settings) as url:
    res = train_local(job, train, args["stages"], url, settings)
rates = [e["samples_per_s"] for e in res.epochs[1:]] or [res.epochs[0]["samples_per_s"]]
print(json.dumps({"samples_per_s": sorted(rates)[len(rates) // 2]}))
"""


def run(tree: Path, data: Path, args: argparse.Namespace) -> float:
    cfg = {k: getattr(args, k) for k in ("epochs", "micro_batches", "wire", "stages")}
    out = subprocess.run(
        [sys.executable, "-c", _RUN, str(tree), str(data), json.dumps(cfg)],
        capture_output=True, text=True, check=False, env={**os.environ, "PYTHONPATH": str(tree)},
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise SystemExit(f"the run in {tree} failed:\n{out.stderr[-2000:]}")
    return json.loads(lines[-1])["samples_per_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the commit to compare against (a git revision)")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--wire", default="auto")
    p.add_argument("--micro-batches", type=int, default=1)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--synthetic", type=int, default=20000)
    args = p.parse_args()

    from arceus.engine.idx import write_synthetic_mnist  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="arceus-ab-") as tmp:
        base, data = Path(tmp) / "base", Path(tmp) / "data"
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "-q", str(base), args.base], check=True)
        try:
            write_synthetic_mnist(data, n_train=args.synthetic, n_val=2000)
            rates: dict[str, list[float]] = {"base": [], "this": []}
            for i in range(args.pairs):
                trees = (("base", base), ("this", HERE))
                for name, tree in trees if i % 2 == 0 else trees[::-1]:
                    rates[name].append(run(tree, data, args))
                b, t = rates["base"][-1], rates["this"][-1]
                print(f"pair {i + 1}: base {b:,.0f}  this {t:,.0f} samples/s", flush=True)
        finally:
            subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base)], check=False)
            subprocess.run(["git", "-C", str(HERE), "worktree", "prune"], check=False)
    b, t = statistics.median(rates["base"]), statistics.median(rates["this"])
    faster = sum(x > y for x, y in zip(rates["this"], rates["base"], strict=True))
    print(f"\nseed job, {args.stages} stages, M={args.micro_batches}, wire {args.wire}, {args.pairs} interleaved pairs")
    print(f"base {args.base}: {b:,.0f} samples/s (median)   this tree: {t:,.0f}   ratio {t / b:.2f}; "
          f"this tree faster in {faster} of {args.pairs} pairs")  # fmt: skip


if __name__ == "__main__":
    main()
