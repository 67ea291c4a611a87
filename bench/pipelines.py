"""Arceus against one process and against torch.distributed.pipelining, in one run.

    python -m bench.pipelines [--model seed|wide] [--stages 2 3] [--micro-batches 1 4]
                              [--wires auto int8 fp16 fp32] [--schedules gpipe 1f1b] [--repeats 3]
                              [--synthetic N]

Models: seed = 784-128-64-10; wide = 784-2048-2048-2048-10 (compute-bound). Batch 256,
lr 0.1, loopback, embedded Redis. Arceus and the references train on the digits stand-in,
or with ``--synthetic N`` on a learnable MNIST-format set of N samples (more steps an
epoch). Cases are interleaved within each repeat; the table shows medians over repeats and
ratios to the single-process 2-thread reference, to torch's pipelining with the same
stages, micro-batches and schedule, and to torch's best configuration with the same stages
(the fastest of every schedule and micro-batch count run). A configuration torch refuses (1F1B needs at least as
many micro-batches as stages) is shown as such. Prints JSON rows too.
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.reference import train_reference
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local
from arceus.plan.partition import plan
from arceus.settings import Settings

from .common import last_epoch_busy, median_rate, synthetic_mnist
from .torch_peer import TorchRefused, torch_pipeline_samples_per_s

MODELS = {"seed": [784, 128, 64, 10], "wide": [784, 2048, 2048, 2048, 10]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=list(MODELS), default="wide")
    p.add_argument("--stages", type=int, nargs="+", default=[2])
    p.add_argument("--micro-batches", type=int, nargs="+", default=[4])
    p.add_argument("--wires", nargs="+", default=["auto", "int8", "fp32"], help="auto: each link's measured choice")
    p.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    p.add_argument("--epochs", type=int, default=4, help="epochs of the digits set per Arceus/reference run")
    p.add_argument("--torch-steps", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--synthetic", type=int, metavar="N", help="train on a learnable MNIST-format set of N samples")
    args = p.parse_args()

    sizes = MODELS[args.model]
    settings, dataset = Settings.from_env(), "digits"
    if args.synthetic:
        settings, dataset = synthetic_mnist(args.synthetic, 2000), "MNIST"
    job = JobConfig(ModelConfig(tuple(sizes)), DatasetConfig(name=dataset, batch_size=256))
    data = load_dataset(job.dataset, settings.data_dir)
    rows: list[dict] = []
    with redis_for(settings) as url:
        for rep in range(args.repeats):
            for threads in (1, 2):
                torch.set_num_threads(threads)
                _, hist = train_reference(job.model, data, TrainConfig(epochs=args.epochs), 256, 1000)
                rows.append({"case": f"reference {threads} thread(s)", "rep": rep, "samples_per_s": median_rate(hist)})
            for stages in args.stages:
                for m in args.micro_batches:
                    for sched in args.schedules:
                        rows.append(_torch_row(job, stages, m, sched, args.torch_steps, rep))
                        for wire in args.wires:
                            train = TrainConfig(epochs=args.epochs, micro_batches=m, wire=wire, schedule=sched)
                            res = train_local(job, train, stages, url, settings)
                            rows.append({
                                "case": f"arceus {stages} stages M={m} {sched} {wire}", "rep": rep,
                                "samples_per_s": median_rate(res.epochs),
                                "val_accuracy": res.epochs[-1]["val_accuracy"],
                                "busy": last_epoch_busy(res.epochs, res.stages),
                                "links": [res.spec.wire(s) for s in range(stages - 1)],
                            })  # fmt: skip
    print(json.dumps(rows, indent=1))
    med: dict[str, float | None] = {}
    for case in dict.fromkeys(row["case"] for row in rows):
        rates = [row["samples_per_s"] for row in rows if row["case"] == case]
        med[case] = None if None in rates else statistics.median(rates)
    ref2 = med["reference 2 thread(s)"]
    print(f"\n{'-'.join(map(str, sizes))}, batch 256, {dataset}, loopback, {args.repeats} repeats")
    # The peer's best: the fastest torch configuration measured with the same stages, whatever
    # its schedule and micro-batches.
    best: dict[str, tuple[float, str]] = {}
    for case, rate in med.items():
        if case.startswith("torch") and rate is not None:
            stages = case.split()[1]
            if rate > best.get(stages, (0.0, ""))[0]:
                best[stages] = (rate, case)
    print(f"{'case':40s} {'samples/s':>10s} {'vs ref 2t':>9s} {'vs torch same':>13s} {'vs torch best':>13s}")
    for case, rate in med.items():
        if rate is None:
            print(f"{case:40s} {'refused':>10s}")
            continue
        vs_same = vs_best = ""
        if case.startswith("arceus"):
            _, stages, _, m, sched, _ = case.split()
            peer = med[f"torch {stages} stages {m} {sched}"]
            vs_same = f"{rate / peer:13.2f}" if peer else f"{'':13s}"
            vs_best = f"{rate / best[stages][0]:13.2f}" if stages in best else ""
        print(f"{case:40s} {rate:10,.0f} {rate / ref2:9.2f} {vs_same} {vs_best}")
    for stages, (rate, case) in best.items():
        print(f"torch's best with {stages} stages: {case} ({rate:,.0f} samples/s)")
    for row in rows:
        if row["case"].endswith(" auto"):
            print(f"{row['case']} repeat {row['rep']}: links sent {', '.join(row['links'])}")


def _torch_row(job: JobConfig, stages: int, m: int, sched: str, steps: int, rep: int) -> dict:
    case = f"torch {stages} stages M={m} {sched}"
    try:
        rate = torch_pipeline_samples_per_s(job, plan(job.layers, stages), TrainConfig(), sched, m, steps, warmup=3)
    except TorchRefused as e:
        return {"case": case, "rep": rep, "samples_per_s": None, "refused": str(e)}
    return {"case": case, "rep": rep, "samples_per_s": rate}


if __name__ == "__main__":
    main()
