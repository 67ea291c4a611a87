"""``arceus status``, ``jobs`` and ``export``: what the API says about jobs, and what they trained."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import ModelConfig
from ..control import clusterfile
from ..control.client import ApiClient
from ..errors import ApiError
from ..settings import Settings

__all__ = ["add_commands", "bar", "checkpoint_line", "job_line", "recovery_lines"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="a job's status, progress and latest metrics")
    st.add_argument("job_id")
    st.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    st.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    st.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    jobs.set_defaults(func=cmd_jobs)

    ex = sub.add_parser("export", help="download a job's trained model as one .safetensors file")
    ex.add_argument("job_id")
    ex.add_argument("-o", "--output", type=Path, help="where to write it (default: <job>-step<N>.safetensors)")
    ex.add_argument("--checkpoint", default="latest", help="the step of a checkpoint (default: the latest)")
    ex.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    ex.set_defaults(func=cmd_export)


def client_for(args: argparse.Namespace) -> ApiClient:
    """The API of ``--api-url`` (else ARCEUS_API_URL), with the cluster token: ARCEUS_TOKEN, else
    the one this machine keeps for that API ($ARCEUS_HOME/cluster.json)."""
    settings = Settings.from_env()
    url = getattr(args, "api_url", None) or settings.api_url
    return ApiClient(url, token=settings.token or clusterfile.token_for(settings.home, url))


def bar(done: float, width: int = 24) -> str:
    n = int(round(done * width))
    return "#" * n + "." * (width - n)


def job_line(job: dict) -> str:
    p, m = job.get("progress") or {}, job.get("latest_metrics") or {}
    parts = [f"{job['job_id']}  {job['status']:<12}"]
    if "step" in p:
        parts.append(f"epoch {p['epoch']} step {p['step']}/{p['steps']} loss {p['loss']:.4f}")
    if m:
        parts.append(f"last epoch {m['epoch']}/{m['epochs']}: val acc {m['val_accuracy']:.4f}, "
                     f"{m['samples_per_s']:,.0f} samples/s")  # fmt: skip
    if job.get("error"):
        parts.append(f"error: {job['error']}")
    return "  ".join(parts)


def checkpoint_line(job: dict) -> str | None:
    if not job.get("checkpoints"):
        return None
    c = job["checkpoints"][-1]
    m = c.get("metrics") or {}
    where = f"epoch {c['epoch'] + 1} batch {c['batch'] + 1}" if c["batch"] else f"end of epoch {c['epoch']}"
    acc = f", val acc {m['val_accuracy']:.4f}" if "val_accuracy" in m else ""
    return f"  last checkpoint: step {c['step']} ({where}{acc}); export it with `arceus export {job['job_id']}`"


def recovery_lines(job: dict) -> list[str]:
    return [f"  recovered: device {r['device_lost']} (stage {r['stage_lost']}) lost at step {r['at_step']}; "
            f"resumed from step {r['resumed_from_step']} on devices {r['devices']} after {r['seconds']:.1f}s "
            f"({r['steps_redone']} steps redone)" for r in job.get("recoveries") or []]  # fmt: skip


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    while True:
        job = client.get(f"/api/jobs/{args.job_id}")
        print(job_line(job), flush=True)
        if not args.follow or job["status"] not in ("initializing", "training", "recovering"):
            for line in [checkpoint_line(job), *recovery_lines(job)]:
                if line:
                    print(line)
            return 0 if job["status"] != "failed" else 1
        time.sleep(2)


def cmd_export(args: argparse.Namespace) -> int:
    client = client_for(args)
    step = args.checkpoint
    if step == "latest":  # name the file by the step it holds
        job = client.get(f"/api/jobs/{args.job_id}")
        if not job["checkpoints"]:
            raise ApiError(f"job {args.job_id} has no checkpoint yet: one is saved at the end of every epoch")
        step = job["checkpoints"][-1]["step"]
    dest = args.output or Path(f"{args.job_id}-step{step}.safetensors")
    size = client.download(f"/api/jobs/{args.job_id}/model?checkpoint={step}", dest)
    print(f"wrote {dest} ({size:,} bytes, step {step}); load it with arceus.load_model({str(dest)!r})")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = client_for(args).get("/api/jobs")["jobs"]
    if not jobs:
        print("no jobs")
    for job in jobs:
        model, data = ModelConfig.describe(job["model_config"]), job["dataset_config"]["name"]
        print(f"{job_line(job)}  [{model} on {data}, {len(job['devices'])} devices]")
    return 0
