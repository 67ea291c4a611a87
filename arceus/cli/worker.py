"""``arceus worker``: register this machine as a device of a job, then serve its Celery queue."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

from ..errors import ApiError
from ..launch.procs import child_environment
from ..settings import Settings
from .jobs import client_for

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("worker", help="register this machine for a job, then run its Celery worker")
    w.add_argument("--api-url", help="the API (default: ARCEUS_API_URL, else http://127.0.0.1:4000)")
    w.add_argument("--job-id", required=True)
    w.add_argument("--name", help="device name (default: hostname-pid)")
    w.add_argument("--device", help="torch device (default: ARCEUS_DEVICE, else mps > cuda > cpu)")
    w.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env(device=args.device)
    if not settings.redis_url:
        print("error: set ARCEUS_REDIS_URL to the cluster's Redis (`arceus up` prints it)", file=sys.stderr)
        return 2
    from ..engine.device import describe_machine  # noqa: PLC0415 - imports torch

    client = client_for(args)
    info = {k: v for k, v in describe_machine(settings.device).items() if v is not None}
    info["name"] = args.name or f"{info['host']}-{os.getpid()}"
    reply = client.post("/api/devices/register", {"job_id": args.job_id, **info})
    device_id = reply["device_id"]
    print(f"registered as device {device_id} ({info['torch_device']}) for job {args.job_id}; queue {reply['queue']}")
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", reply["queue"],
           "-n", f"{reply['queue']}@%h", "--loglevel", "INFO"]  # fmt: skip
    # The worker gets our settings (the device chosen here included) through its environment.
    proc = subprocess.Popen(cmd, env=child_environment(settings))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        return 0
    finally:
        try:
            client.delete(f"/api/devices/{device_id}")
            print(f"unregistered device {device_id}")
        except ApiError as e:
            print(f"note: device {device_id} stays registered: {e}", file=sys.stderr)
