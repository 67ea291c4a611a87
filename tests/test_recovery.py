"""A lost worker is a pause, not the end: real workers, kill -9, a spare, and the weights of an unbroken run."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest
from cluster import Cluster, until_epoch
from torch.testing import assert_close

from arceus import load_model
from arceus.checkpoints import CheckpointStore
from arceus.config import JobConfig, TrainConfig
from arceus.launch.stages import train_local
from arceus.tensorfile import write_atomic

# Dropout (masks follow the step) and AdamW (moments and step count): a resumed run must
# replay exactly. 4,800 samples in batches of 100: 48 steps an epoch, about a second or more
# each here, so the kill lands in epoch 2 with two epochs to spare.
JOB = {
    "model_config": {"layers": [
        {"type": "flatten"}, {"type": "linear", "out_features": 1024}, {"type": "relu"},
        {"type": "dropout", "p": 0.2}, {"type": "linear", "out_features": 256}, {"type": "relu"},
        {"type": "linear", "out_features": 10},
    ]},
    "dataset_config": {"name": "MNIST", "batch_size": 100, "val_batch_size": 500},
}  # fmt: skip
TRAIN = {"epochs": 4, "optimizer": "adamw", "learning_rate": 0.003, "wire": "fp32", "seed": 3}


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path, mnist=(4800, 500), recover_wait_s=45)


def _register(c: Cluster, job_id: str, name: str) -> str:
    device = c.ok("POST", "/api/devices/register", {"job_id": job_id, "name": name})["device_id"]
    c.start_worker(device)
    return device


def test_a_killed_worker_is_a_pause_and_the_job_ends_as_an_unbroken_run(cluster, redis_url, settings):
    job_id = cluster.ok("POST", "/api/jobs", JOB)["job_id"]
    devices = [_register(cluster, job_id, f"mac-{i}") for i in range(3)]
    cluster.wait_live(devices)
    plan = cluster.ok("POST", f"/api/network/initialize/{job_id}", {"seed": 3})["plan"]
    stage = next(s["stage"] for s in plan if s["device_id"] == devices[1])  # the order follows measured speeds
    cluster.ok("POST", f"/api/network/train/{job_id}", TRAIN)
    until_epoch(cluster.client(), job_id, 2)  # then mid-run: epoch 2 under way
    cluster.kill(f"worker-{devices[1]}")  # SIGKILL: no goodbye
    t_kill = time.monotonic()
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 30, "the loss to be noticed")
    assert job["status"] == "recovering", job
    assert f"device {devices[1]} (stage {stage}) was lost" in job["error"]

    spare = _register(cluster, job_id, "spare")  # registering during a recovery does not void anything
    job = cluster.wait_for(job_id, lambda j: j["status"] == "training", 60, "training again")
    back_after = time.monotonic() - t_kill
    (rec,) = job["recoveries"]
    assert rec["device_lost"] == devices[1] and rec["stage_lost"] == stage
    assert "no heartbeat for " in rec["cause"]  # as the supervisor saw it, or a neighbour stage reported it
    assert rec["resumed_from_step"] == 48  # the checkpoint at the end of epoch 1
    # In an order the devices' measured speeds chose (they share this machine: its load shows in them).
    assert sorted(rec["devices"]) == sorted([devices[0], devices[2], spare]) and rec["steps_redone"] >= 0
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 180, "the job to end")
    assert job["status"] == "completed", job["error"]
    assert job["step"] == 192 and job["final_metrics"]["epoch"] == 4
    assert job["train_config"]["epochs"] == 4  # what it was asked to train, not what its last run had left
    assert cluster.ok("GET", f"/api/jobs/{job_id}/metrics")["recoveries"] == job["recoveries"]
    print(f"kill -> training again: {back_after:.1f}s; steps redone: {rec['steps_redone']}; {rec}")

    # The same weights as a run nobody interrupted: a recovered run replays the same steps.
    local = replace(settings, data_dir=cluster.settings.data_dir)
    straight = train_local(JobConfig.parse(JOB), TrainConfig.parse(TRAIN), 3, redis_url, local, keep_weights=True)
    _, combined = CheckpointStore(cluster.settings.checkpoint_dir).model(job_id)
    path = settings.home / "recovered.safetensors"
    write_atomic(path, combined.chunks())
    model = load_model(path)
    for k, v in straight.weights.items():
        assert_close(model.state_dict()[k], v, msg=k)


def test_stop_wins_over_a_recovery(cluster):
    job_id = cluster.ok("POST", "/api/jobs", JOB)["job_id"]
    devices = [_register(cluster, job_id, f"mac-{i}") for i in range(2)]
    cluster.wait_live(devices)
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    cluster.ok("POST", f"/api/network/train/{job_id}", {**TRAIN, "epochs": 500})
    cluster.wait_for(job_id, lambda j: "progress" in j, 60, "training progress")
    cluster.kill(f"worker-{devices[0]}")
    cluster.wait_for(job_id, lambda j: j["status"] == "recovering", 30, "the recovery")
    cluster.ok("POST", f"/api/network/stop/{job_id}")
    time.sleep(2)  # the supervisor's passes see a stopped job, and leave it so
    job = cluster.ok("GET", f"/api/jobs/{job_id}")
    assert job["status"] == "stopped" and job["error"] == "stopped by the user"


def test_a_lost_machine_takes_its_data_redis_with_it_and_the_job_recovers(cluster, r):
    """Per-receiver layout: each `arceus worker` runs the Redis of the streams into its stages. A
    machine killed mid-run takes that Redis with it; its neighbours' sends and reads fail, and they
    must stop as for any lost device (then a recovery), not fail the job."""
    extra = ("--data-redis", "embedded", "--data-bind", "127.0.0.2")  # an address that is not 127.0.0.1
    for name in ("mac-0", "mac-1", "mac-2", "spare"):
        cluster.start_device(name, 1, *extra)
    cluster.wait_for_workers(4)
    by_name = {d["name"]: d["device_id"] for d in cluster.ok("GET", "/api/devices")["devices"]}
    job_id = cluster.ok("POST", "/api/jobs", JOB)["job_id"]
    ids = [by_name[f"mac-{i}"] for i in range(3)]
    deadline = time.monotonic() + 30  # the workers add their data Redis to their records with their first beat
    while not all(json.loads(r.get(f"arceus:device:{d}") or "{}").get("data_url") for d in ids):
        assert time.monotonic() < deadline, "the workers did not register their data Redis"
        time.sleep(0.2)
    plan = cluster.ok("POST", f"/api/network/initialize/{job_id}", {"seed": 3, "devices": ids})["plan"]
    cluster.ok("POST", f"/api/network/train/{job_id}", {**TRAIN, "epochs": 3})
    until_epoch(cluster.client(), job_id, 2)
    middle = plan[1]["device_id"]  # both neighbours write into its data Redis
    name = next(n for n, d in by_name.items() if d == middle)
    cluster.kill(f"device-{name}")  # SIGKILL: its Celery worker and its data Redis die with it
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 30, "the loss to be noticed")
    assert job["status"] == "recovering", job
    job = cluster.wait_for(job_id, lambda j: j["status"] not in ("training", "recovering"), 240, "the job to end")
    assert job["status"] == "completed", job["error"]
    (rec,) = job["recoveries"]
    assert rec["device_lost"] == middle and by_name["spare"] in rec["devices"]
    assert job["final_metrics"]["epoch"] == 3
