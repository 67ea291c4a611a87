"""The seed job (784-128-64-10, batch 256, lr 0.1): 3 local stages vs the reference trainer.

    python -m bench.seed_job [--dataset digits|MNIST] [--synthetic N] [--epochs 20] [--stages 3]
                             [--micro-batches 1 4] [--wire int8 fp32] [--repeats 1] [--threads T]

``--synthetic N`` writes a learnable MNIST-format set of N training samples (the real
torchvision reader loads it), for an MNIST-sized run where MNIST cannot be had.

Prints JSON rows and a table: median samples/s over epochs 2..N (epoch 1 includes
start-up), their ratio to the single-process reference measured in the same run,
wire bytes per sample against fp32, and final validation accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from arceus.config import JobConfig, TrainConfig, seed_job
from arceus.engine.data import load_dataset
from arceus.engine.reference import train_reference
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local
from arceus.settings import Settings

from .common import last_epoch_busy, median_rate, synthetic_mnist


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--stages", type=int, default=3)
    p.add_argument("--micro-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, help="torch threads per stage (default: cores / stages)")
    p.add_argument("--wire", nargs="+", default=["int8", "fp32"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--synthetic", type=int, metavar="N", help="write a learnable MNIST-format set of N samples")
    args = p.parse_args()

    raw = seed_job()
    raw["dataset_config"]["name"] = args.dataset
    job = JobConfig.parse(raw)
    settings = Settings.from_env()
    if args.synthetic:
        settings = synthetic_mnist(args.synthetic, 10_000)
        raw["dataset_config"]["name"] = "MNIST"
        job = JobConfig.parse(raw)
    data = load_dataset(job.dataset, settings.data_dir, settings.download)
    rows = []
    with redis_for(settings) as url:
        for rep in range(args.repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                train = TrainConfig(epochs=args.epochs, learning_rate=0.1)
                _, hist = train_reference(job.model, data, train, job.dataset.batch_size, job.dataset.val_batch_size)
                rows.append({"run": f"reference {threads} thread", "rep": rep, "samples_per_s": median_rate(hist),
                             "val_accuracy": hist[-1]["val_accuracy"]})  # fmt: skip
            for wire in args.wire:
                for m in args.micro_batches:
                    train = TrainConfig(epochs=args.epochs, learning_rate=0.1, wire=wire, micro_batches=m)
                    res = train_local(job, train, args.stages, url, settings, threads=args.threads)
                    last = res.epochs[-1]["epoch"]
                    stages = [s for s in res.stages if s["epoch"] == last]
                    n = res.epochs[-1]["samples"]
                    rows.append(
                        {
                            "run": f"arceus {args.stages} stages {wire} M={m}", "rep": rep,
                            "samples_per_s": median_rate(res.epochs),
                            "val_accuracy": res.epochs[-1]["val_accuracy"],
                            "wire_bytes_per_sample": sum(s["bytes_wire"] for s in stages) / n,
                            "fp32_bytes_per_sample": sum(s["bytes_raw"] for s in stages) / n,
                            "utilization": last_epoch_busy(res.epochs, res.stages),
                        }
                    )  # fmt: skip
    by_run: dict[str, list[dict]] = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    ref = statistics.median(r["samples_per_s"] for r in by_run["reference 1 thread"])
    print(json.dumps(rows, indent=1))
    print(f"\nseed job on {job.dataset.name} ({len(data.train_y)} train samples), {args.epochs} epochs, "
          f"median of epochs 2..N over {args.repeats} repeat(s)")  # fmt: skip
    print(f"{'run':34s} {'samples/s':>10s} {'vs ref 1t':>9s} {'val acc':>8s} {'B/sample wire':>14s} {'fp32':>6s}")
    for name, rs in by_run.items():
        rate = statistics.median(r["samples_per_s"] for r in rs)
        acc = statistics.median(r["val_accuracy"] for r in rs)
        wire = (
            f"{rs[0]['wire_bytes_per_sample']:14.0f} {rs[0]['fp32_bytes_per_sample']:6.0f}"
            if "wire_bytes_per_sample" in rs[0]
            else ""
        )
        print(f"{name:34s} {rate:10,.0f} {rate / ref:9.2f} {acc:8.4f} {wire}")


if __name__ == "__main__":
    main()
