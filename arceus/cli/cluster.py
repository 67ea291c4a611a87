"""``arceus up`` and ``arceus demo``: the control plane on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace

from ..config import DatasetConfig, ModelConfig, seed_job
from ..control import clusterfile
from ..errors import DatasetUnavailable
from ..launch.control_plane import LocalCluster, lan_address
from ..settings import Settings
from .follow import follow
from .options import add_train_options, train_config

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="start Redis (embedded unless ARCEUS_REDIS_URL) and the API; print worker commands")
    up.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address; 0.0.0.0 serves the LAN, Redis gets a password (default 127.0.0.1)",
    )
    up.add_argument("--port", type=int, default=4000, help="the API's port (default 4000)")
    up.add_argument("--flower", action="store_true", help="also start Flower (task monitoring) on --flower-port")
    up.add_argument("--flower-port", type=int, default=5555, help="Flower's port (default 5555)")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="the whole original flow on this machine: up, workers, job, train")
    demo.add_argument("--workers", type=int, default=3, help="devices (Celery workers), one stage each (default 3)")
    add_train_options(demo, ("epochs", "learning_rate", "wire"))
    demo.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    demo.set_defaults(func=cmd_demo)


def cmd_up(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    lan = args.host not in ("127.0.0.1", "localhost")
    # The token is made once and kept in $ARCEUS_HOME/cluster.json (0600): the same across restarts.
    # Loopback-only may run open; served to the LAN, every request but the health check needs it.
    token = settings.token or clusterfile.ensure_token(settings.home)
    here = lan_address() if lan else "127.0.0.1"
    # The dashboard links to Flower: the API learns where it runs before it starts.
    flower = f"http://{here}:{args.flower_port}" if args.flower else None
    settings = replace(settings, token=token if lan else None, flower_url=flower)
    try:  # Ctrl-C at any moment, during start-up too, stops everything started here
        with LocalCluster(settings, host=args.host, port=args.port, persist=True) as cluster:
            api = f"http://{here}:{cluster.port}"
            print(f"Dashboard  {api}/" + ("   (sign in with the token below)" if lan else ""))
            print(f"API        {api}/api   (docs: /api/docs, OpenAPI: /api/openapi.json, health: /api/health, "
                  "Prometheus: /metrics)")  # fmt: skip
            print(f"Data       {settings.home}  (jobs: redis/, append-only; checkpoints: checkpoints/; "
                  "the token: cluster.json)")  # fmt: skip
            if args.flower:  # behind the same secret: Flower's basic auth, user arceus, the token as password
                auth = {"FLOWER_BASIC_AUTH": f"arceus:{token}"} if lan else {}
                cluster.start_flower(args.flower_port, **auth)
                print(f"Flower     {flower}" + ("  (user arceus, the token)" if lan else ""))
            print("\nOn each machine that should hold layers (this one included), once:")
            print(f"  arceus worker --join {api}" + (f" --token {token}" if lan else ""))
            print("It joins the device pool and serves any job; initialize plans over the free live devices.")
            if lan:
                print(f"API calls need the header `Authorization: Bearer {token}`; the arceus CLI sends it.")
            print("\nCtrl-C stops everything started here.", flush=True)
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopped")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    train = train_config(args)  # checked before anything starts
    job = seed_job()
    try:
        from ..engine.data import load_dataset  # noqa: PLC0415 - imports torch

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
        print(f"POST /api/jobs -> job {job_id} ({ModelConfig.describe(job['model_config'])} on "
              f"{job['dataset_config']['name']})")  # fmt: skip
        devices = []
        for i in range(args.workers):
            reply = client.post("/api/devices/register", {"job_id": job_id, "name": f"local-{i}"})
            devices.append(reply["device_id"])
            cluster.start_worker(reply["device_id"], threads=threads)
        print(f"registered devices {devices}; started `celery -A workers worker -Q device-N` for each")
        cluster.wait_live(devices)
        init = client.post(f"/api/network/initialize/{job_id}")
        for s in init["plan"]:
            print(f"  stage {s['stage']}: layers [{s['start_layer']}, {s['end_layer']}) on device {s['device_id']}")
        body = {"epochs": train.epochs, "learning_rate": train.learning_rate, "wire": train.wire}
        run_id = client.post(f"/api/network/train/{job_id}", body)["run_id"]
        print(f"POST /api/network/train/{job_id} {json.dumps(body)}")
        print(f"(the dashboard: {cluster.api_url}/#/jobs/{job_id}; the live feed: GET /api/jobs/{job_id}/events)\n")
        final = follow(client, job_id, run_id=run_id)
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
        smaller = s["bytes_raw"] / max(s["bytes_wire"], 1)
        wire = f"{smaller:.1f}x less than fp32" if smaller > 1.05 else "fp32"
        print(f"  stage {s['stage']}: busy {s['utilization']:.0%}, compute {s['compute_s']:.2f}s, "
              f"wait {s['wait_s']:.2f}s, sent {s['bytes_wire'] / 1e6:.1f} MB ({wire}), "
              f"{row.get('teraflops', 0) * 1e3:.1f} GFLOP/s")  # fmt: skip
    return 0
