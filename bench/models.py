"""The CNN and the char GPT: Arceus against one process and torch.distributed.pipelining, in one run.

    python -m bench.models --model gpt [--stages 2 3] [--micro-batches 1 2 4 8] [--schedules gpipe 1f1b]
                           [--wires fp32 int8] [--plans balanced equal] [--torch-plans balanced]
                           [--samples N] [--epochs 3] [--torch-steps 8] [--repeats 3]

Models:
- cnn: examples/cnn_mnist.json (two conv blocks, batch 256), on a learnable MNIST-format set
  of ``--samples`` images read by torchvision's MNIST loader. Rates in samples/s.
- gpt: a char GPT, 6 transformer blocks, d_model 256, 4 heads, block 128, batch 32, AdamW, on
  the first bytes of the offline text stand-in (``--samples`` blocks of 129 bytes). Rates in
  tokens/s (samples/s x 128).

Every stage is a process with its share of the cores (1 thread each on 2 cores). The
reference is one process training the unsplit model with 1 and with 2 threads; torch's peer is
bench/torch_peer.py on the same split (``--torch-plans``), batch and optimizer, over every
schedule and micro-batch count given that it accepts. ``balanced`` is Arceus's cost-balanced
plan, ``equal`` gives every stage the same number of layers (units: a layer with parameters and
the parameterless ones after it). Cases interleave within each repeat; the table shows medians
over repeats (Arceus and the reference: the median of epochs 2..N), each stage's utilization
(busy / wall) in the last epoch, and ratios to the 2-thread reference and to torch's best.
Prints JSON rows too.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from arceus.config import JobConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.reference import train_reference
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local
from arceus.plan.partition import StageAssignment, assign, partition, plan, units
from arceus.settings import Settings

from .common import last_epoch_busy, median_rate, synthetic_mnist, text_corpus
from .torch_peer import TorchRefused, torch_pipeline_samples_per_s

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def gpt_job(blocks: int = 6, d_model: int = 256, n_heads: int = 4, block_size: int = 128, batch: int = 32) -> dict:
    block = {"type": "transformer_block", "d_model": d_model, "n_heads": n_heads, "mlp_ratio": 4, "dropout": 0.0}
    return {
        "model_config": {"layers": [
            {"type": "embedding", "num_embeddings": 256, "embedding_dim": d_model},
            {"type": "positional_embedding", "num_positions": block_size, "embedding_dim": d_model},
            *[block] * blocks,
            {"type": "layernorm"}, {"type": "linear", "out_features": 256},
        ]},
        "dataset_config": {"name": "text", "path": "corpus.txt", "block_size": block_size, "batch_size": batch,
                           "val_batch_size": batch, "val_fraction": 0.05},
    }  # fmt: skip


def setup(model: str, samples: int) -> tuple[JobConfig, TrainConfig, Settings]:
    """The job, its training options (epochs and schedule set per case) and a data directory."""
    if model == "cnn":
        job = JobConfig.parse(json.loads((EXAMPLES / "cnn_mnist.json").read_text()))
        return job, TrainConfig(), synthetic_mnist(samples, 1000)
    job = JobConfig.parse(gpt_job())
    span = job.dataset.block_size + 1
    settings = text_corpus(int(samples * span / (1 - job.dataset.val_fraction)) + span)
    return job, TrainConfig(optimizer="adamw", learning_rate=1e-3), settings


def stage_plan(job: JobConfig, stages: int, kind: str) -> list[StageAssignment]:
    if kind == "balanced":
        return plan(job.layers, stages)
    return assign(job.layers, partition(len(units(job.layers)), stages), list(range(stages)))


def describe(stages: list[StageAssignment]) -> str:
    return " | ".join(f"[{s.start_layer}, {s.end_layer}) {s.flops / 1e6:.0f} MFLOP" for s in stages)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["cnn", "gpt"], default="gpt")
    p.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    p.add_argument("--micro-batches", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--torch-micro-batches", type=int, nargs="+", help="torch's (default: --micro-batches)")
    p.add_argument("--schedules", nargs="+", default=["gpipe", "1f1b"])
    p.add_argument("--wires", nargs="+", default=["fp32", "int8"])
    p.add_argument("--plans", nargs="+", choices=["balanced", "equal"], default=["balanced", "equal"])
    p.add_argument("--torch-plans", nargs="*", choices=["balanced", "equal"], default=["balanced"])
    p.add_argument("--samples", type=int, default=256, help="training samples (images, or text blocks)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per Arceus and reference run")
    p.add_argument("--torch-steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-reference", action="store_true", help="skip the one-process runs")
    args = p.parse_args()

    job, base, settings = setup(args.model, args.samples)
    text = job.dataset.name == "text"
    unit, per_sample = ("tokens/s", job.dataset.block_size) if text else ("samples/s", 1)
    data = load_dataset(job.dataset, settings.data_dir)
    batch = job.dataset.batch_size
    plans = {d: {kind: stage_plan(job, d, kind) for kind in dict.fromkeys(args.plans + args.torch_plans)}
             for d in args.stages}  # fmt: skip
    for d, kinds in plans.items():
        for kind, stages in kinds.items():
            print(f"{d} stages, {kind}: {describe(stages)}", flush=True)

    def kinds(d: int, wanted: list[str]) -> list[str]:
        """The plans asked for, less an equal-layer plan that is the balanced one."""
        same = "balanced" in wanted and plans[d].get("equal") == plans[d]["balanced"]
        return [k for k in wanted if not (k == "equal" and same)]

    rows: list[dict] = []

    def add(case: str, rep: int, rate: float | None, **extra) -> None:
        rows.append({"case": case, "rep": rep, "rate": None if rate is None else rate * per_sample, **extra})
        shown = "refused" if rate is None else f"{rate * per_sample:,.0f} {unit}"
        print(f"  {case}: {shown} {extra.get('busy', '')}", flush=True)

    with redis_for(settings) as url:
        for rep in range(args.repeats):
            print(f"repeat {rep + 1}/{args.repeats}", flush=True)
            for threads in () if args.no_reference else (1, 2):
                torch.set_num_threads(threads)
                train = replace(base, epochs=args.epochs)
                _, hist = train_reference(job.model, data, train, batch, job.dataset.val_batch_size)
                add(f"reference {threads} thread(s)", rep, median_rate(hist))
            for d in args.stages:
                for kind in kinds(d, args.torch_plans):
                    for m in args.torch_micro_batches or args.micro_batches:
                        for sched in args.schedules:
                            case = f"torch {d} stages {kind} M={m} {sched}"
                            train = replace(base, micro_batches=m)
                            try:
                                rate = torch_pipeline_samples_per_s(job, plans[d][kind], train, sched, m,
                                                                    args.torch_steps, warmup=2)  # fmt: skip
                            except TorchRefused as e:
                                add(case, rep, None, refused=str(e))
                                continue
                            add(case, rep, rate)
                for kind in kinds(d, args.plans):
                    for m in args.micro_batches:
                        for sched in args.schedules:
                            if sched == "1f1b" and m == 1:
                                continue  # the same schedule as GPipe at M=1
                            for wire in args.wires:
                                train = replace(base, epochs=args.epochs, micro_batches=m, wire=wire, schedule=sched)
                                res = train_local(job, train, d, url, settings, stages=plans[d][kind])
                                add(f"arceus {d} stages {kind} M={m} {sched} {wire}", rep, median_rate(res.epochs),
                                    busy=last_epoch_busy(res.epochs, res.stages),
                                    val_loss=res.epochs[-1]["val_loss"])  # fmt: skip
    print(json.dumps(rows, indent=1))
    summarize(rows, args, unit)


def summarize(rows: list[dict], args: argparse.Namespace, unit: str) -> None:
    cases = list(dict.fromkeys(row["case"] for row in rows))
    med, busy = {}, {}
    for case in cases:
        rates = [row["rate"] for row in rows if row["case"] == case]
        med[case] = None if None in rates else statistics.median(rates)
        spreads = [row["busy"] for row in rows if row["case"] == case and "busy" in row]
        if spreads:  # the repeat with the median ratio of busiest to least busy stage
            busy[case] = sorted(spreads, key=lambda b: max(b) / max(min(b), 1e-9))[len(spreads) // 2]
    ref2 = med.get("reference 2 thread(s)")
    print(f"\n{args.model}, {args.repeats} repeat(s), medians; utilization busy/wall per stage (last epoch)")
    print(f"{'case':44s} {unit:>10s} {'vs ref 2t':>9s} {'vs torch best':>13s}  utilization (max/min)")
    for case in cases:
        rate = med[case]
        if rate is None:
            print(f"{case:44s} {'refused':>10s}")
            continue
        vs_ref = f"{rate / ref2:9.2f}" if ref2 else ""
        vs_torch, util = "", ""
        if not case.startswith("reference"):
            d = case.split()[1]
            peers = [r for c, r in med.items() if c.startswith(f"torch {d} stages") and r is not None]
            vs_torch = f"{rate / max(peers):13.2f}" if peers else ""
        if case in busy:
            b = busy[case]
            util = " / ".join(f"{u:.2f}" for u in b) + f" ({max(b) / max(min(b), 1e-9):.2f})"
        print(f"{case:44s} {rate:10,.0f} {vs_ref:>9s} {vs_torch:>13s}  {util}")


if __name__ == "__main__":
    main()
