"""What durability costs: a checkpoint's seconds and bytes, and a recovery from a killed worker.

    python -m bench.durability checkpoints [--model seed|gpt] [--epochs 3]
    python -m bench.durability recovery [--repeats 3]

checkpoints: trains the model with ``arceus train``'s engine (3 stages for the seed job on a
60,000-sample MNIST-format set, 2 for the char GPT) and reads every stage's
``checkpoint_part`` events: the seconds a stage spends saving its part (serialising its
weights and optimizer state and writing them into Redis; the pipeline waits on the slowest
stage), the bytes, and that as a share of the epoch's training seconds. The collector's write
to disk happens in the launcher (the API's supervisor in a cluster), off the stages' path;
it is timed too.

recovery: a real cluster (API, Celery workers, embedded Redis) trains a 4-epoch job on 3
devices; a worker is SIGKILLed in epoch 2 and a spare registers once the job is recovering
(its worker then starts: importing torch is part of the time); it reports the seconds
from the kill to training again (heartbeat expiry, the wait, loading the checkpoint on the
devices, the stages' start) and the steps redone. Medians over the repeats.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from arceus.checkpoints import CheckpointStore
from arceus.config import JobConfig, TrainConfig
from arceus.launch.control_plane import LocalCluster
from arceus.launch.redis_server import redis_for
from arceus.launch.stages import train_local
from arceus.settings import Settings

from .common import synthetic_mnist
from .models import gpt_job

RECOVERY_JOB = {
    "model_config": {"layers": [
        {"type": "flatten"}, {"type": "linear", "out_features": 1024}, {"type": "relu"},
        {"type": "linear", "out_features": 256}, {"type": "relu"}, {"type": "linear", "out_features": 10},
    ]},
    "dataset_config": {"name": "MNIST", "batch_size": 100, "val_batch_size": 500},
}  # fmt: skip


def checkpoints(model: str, epochs: int) -> None:
    if model == "seed":
        settings = synthetic_mnist(60_000, 10_000)
        data = {"name": "MNIST", "batch_size": 256, "val_batch_size": 1000}
        job = JobConfig.parse({"model_config": {"layer_sizes": [784, 128, 64, 10]}, "dataset_config": data})
        train, stages = TrainConfig(epochs=epochs, momentum=0.9), 3
    else:
        from .common import text_corpus  # noqa: PLC0415

        job = JobConfig.parse(gpt_job())
        settings = text_corpus(int(256 * 129 / 0.95) + 129)
        train, stages = TrainConfig(epochs=epochs, optimizer="adamw", learning_rate=1e-3), 2
    home = Path(tempfile.mkdtemp(prefix="arceus-bench-home-"))
    settings = Settings.from_env(data_dir=settings.data_dir, home=home)
    parts: list[dict] = []
    with redis_for(settings) as url:
        t0 = time.perf_counter()
        res = train_local(job, train, stages, url, settings, on_event=parts.append)
        wall = time.perf_counter() - t0
    by_step: dict[int, list[dict]] = {}
    for p in (p for p in parts if p["type"] == "checkpoint_part"):
        by_step.setdefault(p["step"], []).append(p)
    epoch_s = statistics.median(e["seconds"] for e in res.epochs)
    print(f"{model}: {stages} stages, {len(res.epochs)} epochs in {wall:.1f}s, median epoch {epoch_s:.2f}s training")
    print(f"{'step':>6} {'bytes':>12} {'slowest stage s':>16} {'% of epoch':>11}")
    for step, ps in sorted(by_step.items()):
        slowest = max(p["seconds"] for p in ps)
        print(f"{step:>6} {sum(p['bytes'] for p in ps):>12,} {slowest:>16.3f} {100 * slowest / epoch_s:>10.1f}%")
    store = CheckpointStore(settings.checkpoint_dir)
    t0 = time.perf_counter()
    _, combined = store.model(res.spec.job_id)
    merged = combined.to_bytes()
    print(f"export (merge by bytes): {len(merged):,} bytes in {time.perf_counter() - t0:.3f}s")


def recovery(repeats: int) -> None:
    rows = []
    for rep in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix="arceus-bench-"))
        data = synthetic_mnist(4800, 500).data_dir
        settings = Settings.from_env(data_dir=data, home=tmp / "home", threads=1, recover_wait_s=60)
        with LocalCluster(settings, port=0, logs=tmp) as c:
            api = c.client()
            job_id = api.post("/api/jobs", RECOVERY_JOB)["job_id"]
            devices = []
            for i in range(3):
                devices.append(api.post("/api/devices/register", {"job_id": job_id, "name": f"mac-{i}"})["device_id"])
                c.start_worker(devices[-1])
            c.wait_live(devices)
            api.post(f"/api/network/initialize/{job_id}")
            api.post(f"/api/network/train/{job_id}", {"epochs": 4, "learning_rate": 0.05, "wire": "fp32"})
            while (api.get(f"/api/jobs/{job_id}").get("progress") or {}).get("epoch") != 2:
                time.sleep(0.1)
            c.kill(f"worker-{devices[1]}")
            t_kill = time.monotonic()
            while api.get(f"/api/jobs/{job_id}")["status"] != "recovering":  # a spare joins a recovery
                time.sleep(0.1)
            spare = api.post("/api/devices/register", {"job_id": job_id, "name": "spare"})["device_id"]
            c.start_worker(spare)
            while (
                api.get(f"/api/jobs/{job_id}")["status"] != "training"
                or not api.get(f"/api/jobs/{job_id}")["recoveries"]
            ):
                time.sleep(0.1)
            back = time.monotonic() - t_kill
            job = api.get(f"/api/jobs/{job_id}")
            (rec,) = job["recoveries"]
            while api.get(f"/api/jobs/{job_id}")["status"] == "training":
                time.sleep(0.25)
            final = api.get(f"/api/jobs/{job_id}")
            rows.append({"kill_to_training_s": back, **rec, "final": final["status"]})
            print(f"repeat {rep + 1}: kill -> training again {back:.1f}s, steps redone {rec['steps_redone']} "
                  f"(lost at step {rec['at_step']}, resumed from {rec['resumed_from_step']}), "
                  f"job {final['status']}")  # fmt: skip
    print(
        f"median kill -> training again: {statistics.median(r['kill_to_training_s'] for r in rows):.1f}s; "
        f"median steps redone: {statistics.median(r['steps_redone'] for r in rows)} (48 steps an epoch)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("checkpoints")
    c.add_argument("--model", choices=["seed", "gpt"], default="seed")
    c.add_argument("--epochs", type=int, default=3)
    r = sub.add_parser("recovery")
    r.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.what == "checkpoints":
        checkpoints(args.model, args.epochs)
    else:
        recovery(args.repeats)


if __name__ == "__main__":
    main()
