"""``arceus up | demo | worker | status | jobs``: the control plane from the command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from .client import ApiClient, ApiError
from .cluster import LocalCluster, lan_address
from .errors import DatasetUnavailable
from .settings import Settings

__all__ = ["add_commands"]

DEFAULT_API = os.environ.get("ARCEUS_API_URL", "http://127.0.0.1:4000")


def add_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start Redis (embedded unless ARCEUS_REDIS_URL) and the API; print worker commands")
    up.add_argument("--host", default="127.0.0.1", help="bind address; 0.0.0.0 serves the LAN (Redis gets a password)")
    up.add_argument("--port", type=int, default=4000)
    up.add_argument("--flower", action="store_true", help="also start Flower (task monitoring) on --flower-port")
    up.add_argument("--flower-port", type=int, default=5555)
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="the whole original flow on this machine: up, workers, job, train")
    demo.add_argument("--workers", type=int, default=3, help="devices (Celery workers), one stage each (default 3)")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--lr", "--learning-rate", dest="learning_rate", type=float, default=0.1)
    demo.add_argument("--wire", default="int8", choices=("int8", "fp16", "fp32"))
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    demo.set_defaults(func=cmd_demo)

    w = sub.add_parser("worker", help="register this machine for a job, then run its Celery worker")
    w.add_argument("--api-url", default=DEFAULT_API)
    w.add_argument("--job-id", required=True)
    w.add_argument("--name", help="device name (default: hostname-pid)")
    w.add_argument("--device", help="torch device (default: mps > cuda > cpu)")
    w.set_defaults(func=cmd_worker)

    st = sub.add_parser("status", help="a job's status, progress and latest metrics")
    st.add_argument("job_id")
    st.add_argument("--api-url", default=DEFAULT_API)
    st.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
    st.set_defaults(func=cmd_status)

    jobs = sub.add_parser("jobs", help="list jobs")
    jobs.add_argument("--api-url", default=DEFAULT_API)
    jobs.set_defaults(func=cmd_jobs)


# ---------------------------------------------------------------- up
def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:  # Ctrl-C at any moment, during start-up too, stops everything started here
        with LocalCluster(settings, host=args.host, port=args.port) as cluster:
            here = lan_address() if args.host != "127.0.0.1" else "127.0.0.1"
            print(f"API        http://{here}:{cluster.port}/api   (docs: /api/docs, OpenAPI: /api/openapi.json)")
            print(f"Redis      {cluster.worker_redis_url()}")
            if args.flower:
                print(f"Flower     {cluster.start_flower(args.flower_port)}")
            print("\nOn each machine that should hold layers (this one included):")
            print(f"  ARCEUS_REDIS_URL={cluster.worker_redis_url()} arceus worker "
                  f"--api-url http://{here}:{cluster.port} --job-id <JOB_ID>")  # fmt: skip
            print("or, for a device registered by hand (POST /api/devices/register -> device_id N):")
            print(f"  ARCEUS_REDIS_URL={cluster.worker_redis_url()} celery -A workers worker -Q device-N")
            print("\nCtrl-C stops everything started here.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopped")
    return 0


# ---------------------------------------------------------------- worker
def cmd_worker(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    if not settings.redis_url:
        print("error: set ARCEUS_REDIS_URL to the cluster's Redis (`arceus up` prints it)", file=sys.stderr)
        return 2
    from .host import describe_machine  # noqa: PLC0415 - imports torch

    client = ApiClient(args.api_url)
    info = {k: v for k, v in describe_machine(args.device).items() if v is not None}
    info["name"] = args.name or f"{info['host']}-{os.getpid()}"
    reply = client.post("/api/devices/register", {"job_id": args.job_id, **info})
    device_id = reply["device_id"]
    print(f"registered as device {device_id} ({info['torch_device']}) for job {args.job_id}; queue {reply['queue']}")
    if args.device:
        os.environ["ARCEUS_DEVICE"] = args.device
    cmd = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", reply["queue"],
           "-n", f"device-{device_id}@%h", "--loglevel", "INFO"]  # fmt: skip
    import subprocess  # noqa: PLC0415

    proc = subprocess.Popen(cmd)
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


# ---------------------------------------------------------------- status / jobs
def _line(job: dict) -> str:
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
    client = ApiClient(args.api_url)
    while True:
        job = client.get(f"/api/jobs/{args.job_id}")
        print(_line(job), flush=True)
        if not args.follow or job["status"] not in ("initializing", "training"):
            return 0 if job["status"] != "failed" else 1
        time.sleep(2)


def cmd_jobs(args: argparse.Namespace) -> int:
    jobs = ApiClient(args.api_url).get("/api/jobs")["jobs"]
    if not jobs:
        print("no jobs")
    for job in jobs:
        sizes = "-".join(map(str, job["model_config"]["layer_sizes"]))
        print(f"{_line(job)}  [{sizes} on {job['dataset_config']['name']}, {len(job['devices'])} devices]")
    return 0


# ---------------------------------------------------------------- demo
def _bar(done: float, width: int = 24) -> str:
    n = int(round(done * width))
    return "#" * n + "." * (width - n)


def cmd_demo(args: argparse.Namespace) -> int:
    from .cli import SEED_JOB  # noqa: PLC0415

    settings = Settings.from_env()
    job = json.loads(json.dumps(SEED_JOB))
    try:
        from .config import DatasetConfig  # noqa: PLC0415
        from .data import load_dataset  # noqa: PLC0415

        load_dataset(DatasetConfig(), settings.data_dir, settings.download)
    except DatasetUnavailable as e:
        print(f"note: {e}\nnote: using the offline stand-in dataset 'digits' (scikit-learn's 8x8 digits at 28x28)\n")
        job["dataset_config"]["name"] = "digits"
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    t_start = time.monotonic()
    with LocalCluster(settings, port=args.port) as cluster:
        client = cluster.client()
        print(f"API at {cluster.api_url}/api (docs {cluster.api_url}/api/docs), Redis at {cluster.redis_url}")
        job_id = client.post("/api/jobs", job)["job_id"]
        print(f"POST /api/jobs -> job {job_id} ({'-'.join(map(str, job['model_config']['layer_sizes']))} on "
              f"{job['dataset_config']['name']})")  # fmt: skip
        devices = []
        for i in range(args.workers):
            reply = client.post("/api/devices/register", {"job_id": job_id, "name": f"local-{i}"})
            devices.append(reply["device_id"])
            cluster.start_worker(reply["device_id"], threads=threads)
        print(f"registered devices {devices}; started `celery -A workers worker -Q device-N` for each")
        cluster.wait_for_workers(args.workers)
        init = client.post(f"/api/network/initialize/{job_id}")
        for s in init["plan"]:
            print(f"  stage {s['stage']}: layers [{s['start_layer']}, {s['end_layer']}) on device {s['device_id']}")
        train = {"epochs": args.epochs, "learning_rate": args.learning_rate, "wire": args.wire}
        client.post(f"/api/network/train/{job_id}", train)
        print(f"POST /api/network/train/{job_id} {json.dumps(train)}\n")
        final = _follow(client, job_id)
        metrics = client.get(f"/api/jobs/{job_id}/metrics")
        tf = [r for r in client.get("/api/previous_teraflops")["teraflops"] if r["job_id"] == job_id]
    if final["status"] != "completed":
        print(f"\njob {final['status']}: {final.get('error')}", file=sys.stderr)
        return 1
    last = metrics["epochs"][-1]
    stages = [s for s in metrics["stages"] if s["epoch"] == last["epoch"]]
    print(f"\ncompleted in {time.monotonic() - t_start:.1f}s (including start-up): val accuracy "
          f"{last['val_accuracy']:.4f}, {last['samples_per_s']:,.0f} samples/s in the last epoch")  # fmt: skip
    for s in sorted(stages, key=lambda s: s["stage"]):
        row = next((r for r in tf if r["stage"] == s["stage"]), {})
        print(f"  stage {s['stage']}: busy {s['utilization']:.0%}, compute {s['compute_s']:.2f}s, "
              f"wait {s['wait_s']:.2f}s, sent {s['bytes_wire'] / 1e6:.1f} MB "
              f"({s['bytes_raw'] / max(s['bytes_wire'], 1):.1f}x less than fp32), "
              f"{row.get('teraflops', 0) * 1e3:.1f} GFLOP/s")  # fmt: skip
    return 0


def _follow(client: ApiClient, job_id: str) -> dict:
    tty = sys.stdout.isatty()
    seen = 0
    while True:
        job = client.get(f"/api/jobs/{job_id}")
        for e in client.get(f"/api/jobs/{job_id}/metrics")["epochs"][seen:]:
            seen += 1
            print(f"{chr(13) + chr(27) + '[K' if tty else ''}epoch {e['epoch']:>3}/{e['epochs']} [{_bar(1)}] "
                  f"train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.4f} | val loss {e['val_loss']:.4f} "
                  f"acc {e['val_accuracy']:.4f} | {e['samples_per_s']:,.0f} samples/s", flush=True)  # fmt: skip
        p = job.get("progress") or {}
        if tty and "step" in p:
            print(f"\r\033[Kepoch {p['epoch']:>3} [{_bar(p['step'] / p['steps'])}] step {p['step']}/{p['steps']} "
                  f"loss {p['loss']:.4f} acc {p['accuracy']:.3f}", end="", flush=True)  # fmt: skip
        if job["status"] not in ("training", "initializing"):
            return job
        time.sleep(0.5)
