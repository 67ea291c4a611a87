"""``arceus status`` and ``arceus jobs``: what the API says about jobs."""

from __future__ import annotations

import argparse
import time

from ..config import ModelConfig
from ..control.client import ApiClient
from ..settings import Settings

__all__ = ["add_commands", "bar", "job_line"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    st = sub.add_parser("status", help="a job's status, progress and latest metrics")
    st.add_argument("job_id")
    st.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    st.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    st.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    jobs.set_defaults(func=cmd_jobs)


def client_for(args: argparse.Namespace) -> ApiClient:
    return ApiClient(args.api_url or Settings.from_env().api_url)


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


def cmd_status(args: argparse.Namespace) -> int:
    client = client_for(args)
    while True:
        job = client.get(f"/api/jobs/{args.job_id}")
        print(job_line(job), flush=True)
        if not args.follow or job["status"] not in ("initializing", "training"):
            return 0 if job["status"] != "failed" else 1
        time.sleep(2)


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = client_for(args).get("/api/jobs")["jobs"]
    if not jobs:
        print("no jobs")
    for job in jobs:
        model, data = ModelConfig.describe(job["model_config"]), job["dataset_config"]["name"]
        print(f"{job_line(job)}  [{model} on {data}, {len(job['devices'])} devices]")
    return 0
