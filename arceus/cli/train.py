"""``arceus train``: a job across local stage processes, without the API and Celery."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..config import DATASETS, JobConfig, ModelConfig, seed_job
from ..errors import ConfigError, DatasetUnavailable
from ..settings import Settings
from .follow import EventPrinter, follow
from .jobs import add_api_option, client_for, job_line
from .options import add_train_options, train_config

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train", help="train a job of the API (JOB), or one across local stage processes (the seed MNIST job by "
        "default)", description="With JOB: train an initialized job of the API on its devices and follow it. "
        "Without JOB: train across local stage processes, without the API and Celery (the engine alone)."
    )  # fmt: skip
    t.add_argument("api_job", nargs="?", metavar="JOB", help="a job of the API, initialized (arceus init JOB)")
    t.add_argument("--detach", action="store_true", help="with JOB: return once training has started")
    add_api_option(t)
    t.add_argument("--job", type=Path, help="job JSON as POSTed to /api/jobs (default: the seed MNIST job)")
    t.add_argument("--dataset", choices=DATASETS, help="override dataset_config.name")
    t.add_argument("--stages", type=int, help="pipeline stages, one process each (default 3)")
    add_train_options(t)
    t.add_argument("--device", help="torch device for every stage (default: mps > cuda > cpu)")
    t.add_argument("--no-fallback", action="store_true", help="fail instead of using the 'digits' stand-in")
    t.add_argument("--json", action="store_true", help="print the per-epoch history as JSON at the end")
    t.add_argument("--job-id", help="name the run's checkpoints (default: a new id); with --resume, whose to resume")
    t.add_argument(
        "--resume",
        metavar="STEP",
        nargs="?",
        const="latest",
        help="continue --job-id from its latest checkpoint (or the one at STEP), on --stages stages",
    )
    t.set_defaults(func=cmd_train)


def _job(args: argparse.Namespace, settings: Settings) -> JobConfig:
    if args.job:
        try:
            raw = json.loads(args.job.read_text())
        except (OSError, ValueError) as e:
            raise ConfigError("--job", f"cannot read {args.job}: {e}") from None
        if not isinstance(raw, dict):
            raise ConfigError("--job", f"{args.job} must hold a JSON object")
    else:
        raw = seed_job()
    raw.setdefault("dataset_config", {})
    if args.dataset:
        raw["dataset_config"]["name"] = args.dataset
    job = JobConfig.parse(raw)
    if job.dataset.name not in ("MNIST", "FashionMNIST") or args.no_fallback:
        return job  # the stand-in is for MNIST-shaped models
    from ..engine.data import load_dataset  # noqa: PLC0415 - torch is slow to import; not for --help

    try:  # only to probe that the files are there
        load_dataset(job.dataset, settings.data_dir, settings.download)
    except DatasetUnavailable as e:
        print(f"note: {e}", file=sys.stderr)
        print("note: training on the offline stand-in dataset 'digits' instead (--no-fallback to fail)\n")
        raw["dataset_config"]["name"] = "digits"
        job = JobConfig.parse(raw)
    return job


def _train_api_job(args: argparse.Namespace) -> int:
    given = [name for name, default in _LOCAL_ONLY.items() if getattr(args, name) != default]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(flag, f"is for a local run, not for job {args.api_job} of the API (its devices and data "
                          "are the API's)")  # fmt: skip
    client = client_for(args)
    train = train_config(args)
    reply = client.post(f"/api/network/train/{args.api_job}", train.to_dict())
    print(f"training job {args.api_job} (run {reply['run_id']}): {train.epochs} epochs, lr {train.learning_rate}, "
          f"wire {train.wire}, {train.micro_batches} micro-batches, {train.schedule}", flush=True)  # fmt: skip
    if args.detach:
        print(f"follow it with `arceus status {args.api_job} --follow`; stop it with `arceus stop {args.api_job}`")
        return 0
    job = follow(client, args.api_job, run_id=reply["run_id"])
    print(job_line(job))
    return 0 if job["status"] == "completed" else 1


# The flags of a local run, and their defaults: none of them means anything to a job of the API.
_LOCAL_ONLY = {"job": None, "dataset": None, "stages": None, "device": None, "no_fallback": False, "json": False,
               "job_id": None, "resume": None}  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    if args.api_job:
        return _train_api_job(args)
    if args.detach or getattr(args, "api_url", None):
        raise ConfigError("--detach" if args.detach else "--api-url", "is for a job of the API: `arceus train JOB`")
    args.stages = 3 if args.stages is None else args.stages
    settings = Settings.from_env()
    train = train_config(args)  # checked before the dataset is probed
    job = _job(args, settings)
    from ..launch.redis_server import redis_for  # noqa: PLC0415
    from ..launch.stages import train_local  # noqa: PLC0415 - imports torch: not for --help

    print(
        f"training {ModelConfig.describe(job.model.to_dict())} on {job.dataset.name} "
        f"across {args.stages} stage processes "
        f"(wire {train.wire}, {train.micro_batches} micro-batches, batch {job.dataset.batch_size}, "
        f"lr {train.learning_rate})"
    )
    if args.resume is not None and not args.job_id:
        raise ConfigError("--resume", "needs --job-id: the job whose checkpoint to continue from")
    resume = int(args.resume) if args.resume is not None and args.resume.isdigit() else args.resume
    printer = EventPrinter()
    try:
        with redis_for(settings) as url:
            result = train_local(job, train, args.stages, url, settings, on_event=printer, device=args.device,
                                 job_id=args.job_id, resume=resume)  # fmt: skip
    finally:
        printer.close()
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
    if result.checkpoints:
        job_id, step = result.spec.job_id, result.checkpoints[-1]
        print(f"  checkpoint: step {step} in {settings.checkpoint_dir / job_id / str(step)}; continue with "
              f"`arceus train --job-id {job_id} --resume` (and the same --job)")  # fmt: skip
    if args.json:
        print(json.dumps(result.epochs, indent=1))
    return 0
