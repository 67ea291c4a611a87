"""Peak memory per stage under GPipe and 1F1B at the same micro-batch count.

    python -m bench.memory [--micro-batches 8] [--stages 3] [--batch 4096] [--sizes 784-4096-16-4096-10]
                           [--repeats 1]

GPipe runs every forward of a step before any backward, so each stage holds the
activations of all M micro-batches at once; 1F1B starts backwards as soon as it can,
so stage s holds at most min(D - s, M). The default model and batch are chosen so that
activations, not torch's own footprint (~700 MB a process), move the resident set while
a step stays cheap: layers whose fan-in is small or whose fan-out is small compute little
per value they keep. 784-4096-16-4096-10 on 3 stages ([0, 2), [2, 3), [3, 4)) keeps
about 16 KB a sample on every stage, 64 MB per stage for a batch of 4096.

Each run is one epoch of a learnable MNIST-format set of two batches, each stage a fresh
process, so ``peak_rss_mb`` (the stage's ru_maxrss) covers that run alone; ``peak_saved_mb``
is the most autograd held for backward at once (arceus.engine.saved). Prints JSON rows and a
table: per stage and schedule, micro-batches held at once, saved activations, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import statistics

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local

from .common import synthetic_mnist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--micro-batches", type=int, default=8)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--sizes", default="784-4096-16-4096-10")
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()

    sizes = tuple(int(n) for n in args.sizes.split("-"))
    settings = synthetic_mnist(2 * args.batch, 1000)
    job = JobConfig(ModelConfig(sizes), DatasetConfig(name="MNIST", batch_size=args.batch))
    rows = []
    with redis_for(settings) as url:
        for rep in range(args.repeats):
            for schedule in ("gpipe", "1f1b"):
                train = TrainConfig(epochs=1, micro_batches=args.micro_batches, schedule=schedule)
                res = train_local(job, train, args.stages, url, settings)
                for s in sorted(res.stages, key=lambda s: s["stage"]):
                    rows.append({
                        "schedule": schedule, "rep": rep, "stage": s["stage"],
                        "max_in_flight": s["max_in_flight"], "peak_rss_mb": s["peak_rss_mb"],
                        "peak_saved_mb": s["peak_saved_mb"],
                    })  # fmt: skip
    print(json.dumps(rows, indent=1))
    print(f"\n{args.sizes}, batch {args.batch}, M={args.micro_batches}, {args.stages} stages, "
          f"{args.repeats} repeat(s), medians")  # fmt: skip
    print(f"{'stage':>5s} {'schedule':>8s} {'held':>4s} {'saved MB':>9s} {'peak RSS MB':>11s}")
    for stage in range(args.stages):
        for schedule in ("gpipe", "1f1b"):
            mine = [r for r in rows if r["stage"] == stage and r["schedule"] == schedule]
            held = max(r["max_in_flight"] for r in mine)
            saved = statistics.median(r["peak_saved_mb"] for r in mine)
            rss = statistics.median(r["peak_rss_mb"] for r in mine)
            print(f"{stage:5d} {schedule:>8s} {held:4d} {saved:9,.1f} {rss:11,.0f}")


if __name__ == "__main__":
    main()
