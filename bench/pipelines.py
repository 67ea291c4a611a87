"""Arceus against one process and against torch.distributed.pipelining, in one run.

    python -m bench.pipelines [--model seed|wide] [--stages 2 3] [--micro-batches 4]
                              [--wires int8 fp16 fp32] [--schedules gpipe 1f1b] [--repeats 3]

Models: seed = 784-128-64-10; wide = 784-2048-2048-2048-10 (compute-bound). Batch 256,
lr 0.1, loopback, embedded Redis. Cases are interleaved within each repeat; the table
shows medians over repeats and ratios to the single-process 2-thread reference and to
torch's pipelining with the same stages, micro-batches and schedule. Prints JSON rows too.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from arceus.cli import redis_url
from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.data import load_dataset
from arceus.local import train_local
from arceus.reference import train_reference
from arceus.settings import Settings

from .seed_job import median_rate
from .torch_peer import torch_pipeline_samples_per_s

MODELS = {"seed": [784, 128, 64, 10], "wide": [784, 2048, 2048, 2048, 10]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=list(MODELS), default="wide")
    p.add_argument("--stages", type=int, nargs="+", default=[2])
    p.add_argument("--micro-batches", type=int, default=4)
    p.add_argument("--wires", nargs="+", default=["int8", "fp32"])
    p.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    p.add_argument("--epochs", type=int, default=4, help="epochs of the digits set per Arceus/reference run")
    p.add_argument("--torch-steps", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    sizes = MODELS[args.model]
    job = JobConfig(ModelConfig(tuple(sizes)), DatasetConfig(name="digits", batch_size=256))
    settings = Settings.from_env()
    data = load_dataset(job.dataset, settings.data_dir)
    rows: list[dict] = []
    with redis_url(settings) as url:
        for rep in range(args.repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                _, hist = train_reference(job.model, data, TrainConfig(epochs=args.epochs), 256, 1000)
                rows.append({"case": f"reference {threads} thread(s)", "rep": rep, "samples_per_s": median_rate(hist)})
            for stages in args.stages:
                for sched in args.schedules:
                    rate = torch_pipeline_samples_per_s(
                        sizes, stages, args.micro_batches, sched, steps=args.torch_steps, warmup=3
                    )
                    rows.append({"case": f"torch {stages} stages {sched}", "rep": rep, "samples_per_s": rate})
                    for wire in args.wires:
                        train = TrainConfig(epochs=args.epochs, micro_batches=args.micro_batches, wire=wire,
                                            schedule=sched)  # fmt: skip
                        res = train_local(job, train, stages, url, settings)
                        last = [s for s in res.stages if s["epoch"] == res.epochs[-1]["epoch"]]
                        rows.append({
                            "case": f"arceus {stages} stages {sched} {wire}", "rep": rep,
                            "samples_per_s": median_rate(res.epochs),
                            "busy": [round(s["utilization"], 2) for s in sorted(last, key=lambda s: s["stage"])],
                        })  # fmt: skip
    print(json.dumps(rows, indent=1))
    med = {}
    for row in rows:
        med.setdefault(row["case"], []).append(row["samples_per_s"])
    med = {k: statistics.median(v) for k, v in med.items()}
    ref2 = med["reference 2 thread(s)"]
    print(f"\n{'-'.join(map(str, sizes))}, batch 256, M={args.micro_batches}, loopback, {args.repeats} repeats")
    print(f"{'case':34s} {'samples/s':>10s} {'vs ref 2t':>9s} {'vs torch':>8s}")
    for case, rate in med.items():
        vs_torch = ""
        if case.startswith("arceus"):
            _, stages, _, sched, _ = case.split()
            vs_torch = f"{rate / med[f'torch {stages} stages {sched}']:8.2f}"
        print(f"{case:34s} {rate:10,.0f} {rate / ref2:9.2f} {vs_torch}")


if __name__ == "__main__":
    main()
