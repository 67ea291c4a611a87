"""The ``arceus`` command line.

``arceus train`` trains a job across local stage processes (no API, no Celery);
``arceus demo`` runs the whole original flow (API, Celery workers) on this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from pathlib import Path

from .config import DATASETS, SCHEDULES, WIRE_CODECS, JobConfig, TrainConfig
from .errors import ArceusError, ConfigError, DatasetUnavailable
from .settings import Settings

__all__ = ["main"]

SEED_JOB = {
    "model_config": {"layer_sizes": [784, 128, 64, 10]},
    "dataset_config": {
        "name": "MNIST",
        "batch_size": 256,
        "val_batch_size": 1000,
        "normalize": {"mean": [0.1307], "std": [0.3081]},
    },
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arceus", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a job across local stage processes (the seed MNIST job by default)")
    t.add_argument("--job", type=Path, help="job JSON as POSTed to /api/jobs (default: the seed MNIST job)")
    t.add_argument("--dataset", choices=DATASETS, help="override dataset_config.name")
    t.add_argument("--stages", type=int, default=3, help="pipeline stages, one process each (default 3)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=0.1)
    t.add_argument("--momentum", type=float, default=0.0)
    t.add_argument("--micro-batches", type=int, default=1, help="micro-batches per mini-batch (default 1)")
    t.add_argument("--wire", choices=list(WIRE_CODECS), default="int8", help="activation/gradient codec")
    t.add_argument("--schedule", choices=SCHEDULES, default="gpipe")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", help="torch device for every stage (default: mps > cuda > cpu)")
    t.add_argument("--no-fallback", action="store_true", help="fail instead of using the 'digits' stand-in")
    t.add_argument("--json", action="store_true", help="print the per-epoch history as JSON at the end")
    t.set_defaults(func=cmd_train)
    from .cli_control import add_commands  # noqa: PLC0415

    add_commands(sub)
    return p


@contextlib.contextmanager
def redis_url(settings: Settings):
    """The configured Redis, or an embedded one for the duration of the block."""
    if settings.redis_url:
        yield settings.redis_url
        return
    from .redis_server import EmbeddedRedis  # noqa: PLC0415

    with EmbeddedRedis() as server:
        yield server.url


def _job(args: argparse.Namespace, settings: Settings) -> JobConfig:
    if args.job:
        try:
            raw = json.loads(args.job.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("--job", f"cannot read {args.job}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--job", f"{args.job} must hold a JSON object")
    else:
        raw = json.loads(json.dumps(SEED_JOB))
    raw.setdefault("dataset_config", {})
    if args.dataset:
        raw["dataset_config"]["name"] = args.dataset
    job = JobConfig.parse(raw)
    if job.dataset.name == "digits" or args.no_fallback:
        return job
    from .data import load_dataset  # noqa: PLC0415 - only to probe that the files are there

    try:
        load_dataset(job.dataset, settings.data_dir, settings.download)
    except DatasetUnavailable as e:
        print(f"note: {e}", file=sys.stderr)
        print("note: training on the offline stand-in dataset 'digits' instead (--no-fallback to fail)\n")
        raw["dataset_config"]["name"] = "digits"
        job = JobConfig.parse(raw)
    return job


_CLEAR = "\r\033[K"  # back to column 0 and erase the progress line


def _print_event(ev: dict) -> None:
    kind = ev["type"]
    if kind == "progress":
        if not sys.stdout.isatty():
            return
        print(
            f"{_CLEAR}  epoch {ev['epoch']} step {ev['step']}/{ev['steps']}  loss {ev['loss']:.4f}  "
            f"acc {ev['accuracy']:.3f}",
            end="", flush=True,
        )  # fmt: skip
    elif kind == "epoch":
        print(
            f"{_CLEAR if sys.stdout.isatty() else ''}epoch {ev['epoch']:>3}/{ev['epochs']}  "
            f"train loss {ev['train_loss']:.4f} acc {ev['train_accuracy']:.4f}"
            f"  |  val loss {ev['val_loss']:.4f} acc {ev['val_accuracy']:.4f}  |  {ev['samples_per_s']:,.0f} samples/s",
            flush=True,
        )
    elif kind == "stage_started":
        print(f"  {ev['who']} on {ev['device']}")


def cmd_train(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    job = _job(args, settings)
    train = TrainConfig.parse(
        {
            "epochs": args.epochs, "learning_rate": args.learning_rate, "momentum": args.momentum,
            "micro_batches": args.micro_batches, "wire": args.wire, "schedule": args.schedule, "seed": args.seed,
        }
    )  # fmt: skip
    from .local import train_local  # noqa: PLC0415 - torch import is slow; not needed for --help

    sizes = "-".join(map(str, job.model.layer_sizes))
    print(
        f"training {sizes} on {job.dataset.name} across {args.stages} stage processes "
        f"(wire {train.wire}, {train.micro_batches} micro-batches, batch {job.dataset.batch_size}, "
        f"lr {train.learning_rate})"
    )
    with redis_url(settings) as url:
        result = train_local(job, train, args.stages, url, settings, on_event=_print_event, device=args.device)
    last = result.epochs[-1]
    stages = [s for s in result.stages if s["epoch"] == last["epoch"]]
    raw = sum(s["bytes_raw"] for s in stages)
    wire = sum(s["bytes_wire"] for s in stages)
    print(
        f"done in {result.seconds:.1f}s: val accuracy {last['val_accuracy']:.4f}, "
        f"{last['samples_per_s']:,.0f} samples/s in the last epoch"
    )
    for s in sorted(stages, key=lambda s: s["stage"]):
        print(
            f"  stage {s['stage']}: compute {s['compute_s']:.2f}s  codec {s['codec_s']:.2f}s  "
            f"wait {s['wait_s']:.2f}s  send {s['send_s']:.2f}s  busy {s['utilization']:.0%}"
        )
    if raw:
        print(f"  wire: {wire / last['samples']:,.0f} bytes/sample sent vs {raw / last['samples']:,.0f} fp32 "
              f"({raw / max(wire, 1):.2f}x smaller)")  # fmt: skip
    if args.json:
        print(json.dumps(result.epochs, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except ArceusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
