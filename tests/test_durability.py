"""Nothing lost when a process restarts: the embedded Redis keeps its data, the API picks up
the runs it was following, and a Redis restart mid-run never leaves a job training forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import redis
from cluster import Cluster, until_epoch
from conftest import write_mnist

from arceus import keys
from arceus.launch.control_plane import LocalCluster
from arceus.launch.redis_server import EmbeddedRedis
from arceus.settings import Settings

# 4,800 samples in batches of 100, 1024 wide: a second or more an epoch here, so a restart
# lands mid-run.
JOB = {
    "model_config": {"layers": [
        {"type": "flatten"}, {"type": "linear", "out_features": 1024}, {"type": "relu"},
        {"type": "linear", "out_features": 256}, {"type": "relu"}, {"type": "linear", "out_features": 10},
    ]},
    "dataset_config": {"name": "MNIST", "batch_size": 100, "val_batch_size": 500},
}  # fmt: skip
TRAIN = {"epochs": 4, "learning_rate": 0.05, "wire": "fp32"}


def _api(c: LocalCluster, method: str, path: str, body: object = None) -> dict:
    return c.client().call(method, path, body)


def _start_job(c: LocalCluster, devices: int = 2) -> str:
    job_id = _api(c, "POST", "/api/jobs", JOB)["job_id"]
    ids = []
    for i in range(devices):
        ids.append(_api(c, "POST", "/api/devices/register", {"job_id": job_id, "name": f"mac-{i}"})["device_id"])
        c.start_worker(ids[-1])
    c.wait_live(ids)
    _api(c, "POST", f"/api/network/initialize/{job_id}")
    _api(c, "POST", f"/api/network/train/{job_id}", TRAIN)
    return job_id


def _wait(c: LocalCluster, job_id: str, predicate, timeout: float, what: str) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        status, job = c.client().request("GET", f"/api/jobs/{job_id}")
        if status == 200 and predicate(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; job is {job}")
        time.sleep(0.25)


def test_the_persistent_redis_comes_back_with_its_data_on_the_same_port(tmp_path):
    server = EmbeddedRedis.persistent(tmp_path).start()
    port = server.port
    r = redis.Redis.from_url(server.url)
    r.set("kept", "yes")
    r.xadd("stream", {"e": "1"})
    r.close()
    server.stop()
    assert (tmp_path / "redis" / "server.json").stat().st_mode & 0o077 == 0
    again = EmbeddedRedis.persistent(tmp_path).start()
    try:
        assert again.port == port and again.data_dir == tmp_path / "redis"
        r = redis.Redis.from_url(again.url)
        assert r.get("kept") == b"yes" and r.xlen("stream") == 1
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        r.close()
    finally:
        again.stop()
    assert json.loads((tmp_path / "redis" / "server.json").read_text())["port"] == port


def test_stopping_and_starting_arceus_up_brings_back_every_job(tmp_path):
    settings = Settings.from_env(home=tmp_path / "home", data_dir=tmp_path / "data", redis_url="")
    settings = replace(settings, redis_url=None)  # the embedded one, as `arceus up` runs it
    with LocalCluster(settings, port=0, logs=tmp_path, persist=True) as c:
        job_id = _api(c, "POST", "/api/jobs", JOB)["job_id"]
        device = _api(c, "POST", "/api/devices/register", {"job_id": job_id, "name": "mac"})["device_id"]
    with LocalCluster(settings, port=0, logs=tmp_path, persist=True) as c:
        job = _api(c, "GET", f"/api/jobs/{job_id}")
        assert job["status"] == "created" and job["model_config"]["layers"][1]["out_features"] == 1024
        assert [d["device_id"] for d in job["devices"]] == [device]
        # A new device never takes an old one's id (and queue).
        assert _api(c, "POST", "/api/devices/register", {"job_id": job_id})["device_id"] != device


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path, mnist=(4800, 500))


def test_killing_the_api_mid_run_loses_nothing(cluster):
    job_id = _start_job(cluster)
    until_epoch(cluster.client(), job_id, 2)  # then mid-run: epoch 2 of 4 under way
    cluster.kill("api")  # SIGKILL: its supervisor thread dies mid-pass
    time.sleep(2)
    cluster.start_api()
    job = _wait(cluster, job_id, lambda j: j["status"] != "training", 180, "the job to end")
    assert job["status"] == "completed", job["error"]
    assert job["step"] == 192 and [c["step"] for c in job["checkpoints"]] == [144, 192]
    assert [e["epoch"] for e in cluster.client().get(f"/api/jobs/{job_id}/metrics")["epochs"]] == [1, 2, 3, 4]


def test_restarting_redis_mid_run_never_leaves_the_job_training(tmp_path):
    write_mnist(tmp_path / "data", n_train=4800, n_val=500)
    settings = Settings.from_env(home=tmp_path / "home", data_dir=tmp_path / "data", threads=1,
                                 init_timeout_s=60, recover_wait_s=30)  # fmt: skip
    settings = replace(settings, redis_url=None)
    with LocalCluster(settings, port=0, logs=tmp_path, persist=True) as c:
        job_id = _start_job(c, devices=3)
        until_epoch(c.client(), job_id, 2)
        c.redis.stop()  # SIGTERM: the append-only file is flushed; every client loses its connection
        time.sleep(1)
        c.redis.start()  # the same port and data
        job = _wait(c, job_id, lambda j: j["status"] not in ("training", "recovering"), 240, "the job to end")
        assert job["status"] == "completed", job["error"]
        assert job["step"] == 192 and job["final_metrics"]["epoch"] == 4
        r = redis.Redis.from_url(c.redis_url)
        leftover = [k.decode() for k in r.scan_iter(match=f"{keys.job(job_id)}:run:*:fwd:*")]
        assert not leftover  # a finished run's streams go
        print("recoveries:", job["recoveries"])


def test_a_redis_that_stops_answering_ends_the_run_with_an_error_naming_it(tmp_path):
    """A Redis whose machine vanished (asleep, unplugged) closes no connection: every call on it would
    wait forever. A stopped process stands in for it; the run ends, and says why, while it is still
    stopped."""
    write_mnist(tmp_path / "data", n_train=6000, n_val=500)
    with EmbeddedRedis(binary=Settings.from_env().redis_server) as server:
        env = {**os.environ, "ARCEUS_REDIS_URL": server.url, "ARCEUS_SOCKET_TIMEOUT": "2", "PYTHONUNBUFFERED": "1",
               "ARCEUS_DATA_DIR": str(tmp_path / "data"), "ARCEUS_HOME": str(tmp_path / "home")}  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "arceus.cli", "train", "--epochs", "50", "--wire", "fp32"],
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            for line in proc.stdout:
                if line.startswith("epoch"):  # training: every stage is talking to Redis
                    break
            os.kill(server.proc.pid, signal.SIGSTOP)
            t0 = time.monotonic()
            _, err = proc.communicate(timeout=90)
            seconds = time.monotonic() - t0
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
            proc.kill()
    print(f"arceus train ended {seconds:.1f}s after its Redis stopped answering")
    assert proc.returncode == 2, err
    assert f"error: lost the run's Redis at 127.0.0.1:{server.port}: TimeoutError" in err, err


def test_a_redis_frozen_mid_run_never_leaves_the_job_training(tmp_path):
    """The coordinator's Redis stops answering for longer than ARCEUS_SOCKET_TIMEOUT (its machine
    slept), then answers again: the workers' stages gave up meanwhile, and the job still ends."""
    write_mnist(tmp_path / "data", n_train=4800, n_val=500)
    settings = Settings.from_env(home=tmp_path / "home", data_dir=tmp_path / "data", threads=1,
                                 init_timeout_s=60, recover_wait_s=30, socket_timeout_s=2)  # fmt: skip
    settings = replace(settings, redis_url=None)
    with LocalCluster(settings, port=0, logs=tmp_path, persist=True) as c:
        job_id = _start_job(c, devices=3)
        until_epoch(c.client(), job_id, 2)
        os.kill(c.redis.proc.pid, signal.SIGSTOP)
        try:
            time.sleep(8)  # four socket timeouts
        finally:
            os.kill(c.redis.proc.pid, signal.SIGCONT)
        job = _wait(c, job_id, lambda j: j["status"] not in ("training", "recovering"), 240, "the job to end")
        assert job["status"] == "completed", job["error"]
        assert job["step"] == 192 and job["final_metrics"]["epoch"] == 4
        print("recoveries:", job["recoveries"])
