"""The cluster's front door (issue 11): devices that outlive jobs, a token, nothing that wedges.

Real API (waitress), real `arceus worker` and Celery processes, real Redis servers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from cluster import ROOT, SMALL, Cluster
from conftest import write_mnist

from arceus.control.client import ApiClient
from arceus.control.devices import BEAT_S
from arceus.launch.redis_server import EmbeddedRedis


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path, mnist=(1200, 200))


def _train(c: Cluster, job_id: str, epochs: int = 1) -> dict:
    c.ok("POST", f"/api/network/train/{job_id}", {"epochs": epochs, "learning_rate": 0.1})
    job = c.wait_for(job_id, lambda j: j["status"] not in ("training", "recovering"), 120, "the run to end")
    assert job["status"] == "completed", job["error"]
    return job


def _processes_serving(queue: str) -> list[int]:
    """Pids of live processes whose command line names ``queue`` (a Celery worker serving it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().split(")")[-1].split()[0]
            except OSError:
                continue
            if queue.encode() in cmd and state != "Z":
                found.append(int(entry.name))
    return found


def test_jobs_share_the_pool_with_no_restarts(cluster):
    """Workers join once; a second and a third job train on them, none restarted."""
    a, b = cluster.join("mac-a", "mac-b")
    pids = {name: p.pid for name, p in cluster.procs.items()}
    for i in range(3):
        job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
        init = cluster.ok("POST", f"/api/network/initialize/{job_id}")  # default: the free live devices
        assert sorted(s["device_id"] for s in init["plan"]) == sorted([a, b])  # both joined at once: any order
        job = _train(cluster, job_id)
        assert job["final_metrics"]["epoch"] == 1, i
    assert {name: p.pid for name, p in cluster.procs.items() if p.poll() is None} == pids
    # Asked for by id: one device holds the whole model.
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    init = cluster.ok("POST", f"/api/network/initialize/{job_id}", {"devices": [b]})
    assert [(s["device_id"], s["start_layer"], s["end_layer"]) for s in init["plan"]] == [(b, 0, 6)]


def test_each_worker_can_hold_the_streams_into_its_stages(cluster, r):
    """`arceus worker --data-redis embedded`: a password-protected Redis beside each worker holds the
    streams into its stages (on a LAN, each payload then crosses the network once). The API hands
    their URLs to the stages in their tasks, and to no client."""
    for name in ("mac-a", "mac-b"):
        cluster.start_device(name, 1, "--data-redis", "embedded")  # the cluster is on loopback: bound there
    cluster.wait_for_workers(2)
    devices = [d["device_id"] for d in cluster.ok("GET", "/api/devices")["devices"]]
    deadline = time.monotonic() + 30
    while not all(json.loads(r.get(f"arceus:device:{d}")).get("data_url") for d in devices):
        assert time.monotonic() < deadline, "the workers did not register their data Redis"
        time.sleep(0.2)
    data_urls = {d: json.loads(r.get(f"arceus:device:{d}"))["data_url"] for d in devices}
    # Stages of other machines get a Redis user of their own there, never the admin password.
    assert all(re.fullmatch(r"redis://arceus-worker:[0-9a-f]{32}@127\.0\.0\.1:\d+/0", u) for u in data_urls.values())
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    plan = cluster.ok("POST", f"/api/network/initialize/{job_id}")["plan"]
    # A run far longer than the look takes (the streams live only while it does), stopped after it.
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 1000, "learning_rate": 0.1})
    # Mid-run: stage 0's data Redis holds the gradients into it, stage 1's the activations, and the
    # cluster's Redis no stream of the run.
    into = {plan[0]["device_id"]: "bwd:0", plan[1]["device_id"]: "fwd:1"}
    clients = {d: redis.Redis.from_url(data_urls[d]) for d in into}
    seen: dict[str, set] = {d: set() for d in into}
    deadline = time.monotonic() + 60
    while any(into[d] not in seen[d] for d in into):
        assert time.monotonic() < deadline, seen
        for d, client in clients.items():
            seen[d] |= {":".join(k.decode().split(":")[-2:]) for pattern in ("*:fwd:*", "*:bwd:*")
                        for k in client.scan_iter(pattern)}  # fmt: skip
        assert not [k for k in r.scan_iter(f"arceus:job:{job_id}:*") if b":fwd:" in k or b":bwd:" in k]
        time.sleep(0.05)
    assert {d: {k for k in got if not k.endswith("credit")} for d, got in seen.items()} == {
        d: {stream} for d, stream in into.items()}  # fmt: skip
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["status"] == "training"
    cluster.ok("POST", f"/api/network/stop/{job_id}")
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 60, "the run to stop")
    assert job["status"] == "stopped", job
    # The stages drop the streams into them when they stop.
    deadline = time.monotonic() + 30
    while any(client.exists(f"arceus:job:{job_id}:{into[d]}") for d, client in clients.items()):
        assert time.monotonic() < deadline, "the stopped stages left their streams behind"
        time.sleep(0.2)
    passwords = [u.split(":")[2].split("@")[0] for u in data_urls.values()]
    # That user may stream, not administer.
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(next(iter(data_urls.values()))).config_get("dir")
    for path in ("/api/devices", f"/api/jobs/{job_id}", "/api/workers"):
        body = json.dumps(cluster.ok("GET", path))
        assert not any(p in body for p in passwords) and "data_url" not in body, path


def test_fifty_concurrent_worker_listings_then_a_train_that_starts(cluster):
    cluster.join("mac-a", "mac-b")
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    with ThreadPoolExecutor(50) as pool:
        replies = list(pool.map(lambda _: cluster.call("GET", "/api/workers"), range(50)))
    assert all(status == 200 and len(body["workers"]) == 2 for status, body in replies), replies[:3]
    _train(cluster, job_id)


def test_twenty_parallel_registrations_of_one_name_make_one_device(cluster):
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: cluster.call("POST", "/api/devices/register", {"name": "m1"}), range(20)))
    assert sorted(status for status, _ in replies) == [201] + [409] * 19
    (device,) = cluster.ok("GET", "/api/devices")["devices"]
    assert device["name"] == "m1" and not device["alive"]  # registered; no worker serves it yet


def test_an_oversized_plan_is_refused_before_any_worker_allocates(cluster, r):
    # 1.6 billion parameters: with gradients and AdamW state, 25.6 GB in the middle layer alone.
    job_id = cluster.ok("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 40000, 40000, 10]}})["job_id"]
    devices = [cluster.ok("POST", "/api/devices/register", {"job_id": job_id, "name": f"m{i}", "memory_gb": 8})
               for i in range(2)]  # fmt: skip
    for d in devices:
        cluster.start_worker(d["device_id"])
    cluster.wait_live([d["device_id"] for d in devices])
    status, reply = cluster.call("POST", f"/api/network/initialize/{job_id}")
    assert status == 409 and "reported 8.00 GiB, but stage 1 (layers [3, 6)) needs about 23.96 GiB" in reply["message"]
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["status"] == "created"
    for d in devices:  # nothing was sent to them, and they received nothing
        assert r.llen(d["queue"]) == 0
        log = (cluster.logs / f"worker-{d['device_id']}.log").read_text()
        assert "arceus.load_shard" not in log.split("[tasks]", 1)[1].split("ready.", 1)[1]


def test_a_missing_dataset_is_409_at_initialize(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path / "empty", tmp_path)  # no MNIST files there, and no download
    c.start_api()
    try:
        (device,) = c.join("mac")
        job_id = c.ok("POST", "/api/jobs", SMALL)["job_id"]
        status, reply = c.call("POST", f"/api/network/initialize/{job_id}")
        assert status == 409, reply
        message = reply["message"]
        assert f"device {device} failed to load its shard: DatasetUnavailable: MNIST is not available" in message
        assert "ARCEUS_DATA_DIR" in reply["message"]
    finally:
        c.stop_all()


def test_every_route_needs_the_token(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path, tmp_path, token="s3cret-token")
    c.start_api()
    try:
        doc = c.ok("GET", "/api/openapi.json")  # with the token
        anonymous, wrong = ApiClient(c.base), ApiClient(c.base, token="wrong")
        checked = 0
        for path, methods in doc["paths"].items():
            concrete = path.replace("{job_id}", "abc").replace("{device_id}", "abcdef")
            for method in methods:
                for who in (anonymous, wrong):
                    status, reply = who.request(method.upper(), concrete, {} if method == "post" else None)
                    if path in ("/api/health", "/api/session"):  # public: a check, and signing in
                        assert status != 401, (method, path, status, reply)
                        continue
                    assert status == 401, (method, path, status, reply)
                    assert reply["message"].startswith(("no token", "wrong token"))
                    checked += 1
        assert checked >= 2 * 14
        # A device cannot join with a wrong token: the worker says so and exits.
        env = {**c.env, "ARCEUS_TOKEN": ""}
        out = subprocess.run(
            [sys.executable, "-m", "arceus.cli", "worker", "--join", c.base, "--token", "wrong", "--name", "x"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert out.returncode != 0 and "401 wrong token" in out.stderr, out.stderr
        assert c.ok("GET", "/api/devices")["devices"] == []
        # With the right token it joins, and runs on without the token in its command line.
        home = tmp_path / "worker-home"
        worker = subprocess.Popen(
            [sys.executable, "-m", "arceus.cli", "worker", "--join", c.base, "--token", "s3cret-token", "--name", "w"],
            cwd=ROOT, env={**env, "ARCEUS_HOME": str(home)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not [d for d in c.ok("GET", "/api/devices")["devices"] if d["alive"]]:
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.2)
            assert b"s3cret-token" not in Path(f"/proc/{worker.pid}/cmdline").read_bytes()
            kept = json.loads((home / "cluster.json").read_text())
            assert kept["joined"] == {c.base: "s3cret-token"} and kept["api_url"] == c.base
        finally:
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=60) == 0
        # `arceus doctor` checks the same door, and the rest of this machine.
        doctor = [sys.executable, "-m", "arceus.cli", "doctor", "--join", c.base]
        good = subprocess.run(doctor, cwd=ROOT, env=c.env, capture_output=True, text=True, timeout=120)
        assert good.returncode == 0, good.stdout + good.stderr
        for check in ("api", "token", "code", "redis", "torch", "data dir", "memory"):
            assert f"ok    {check}" in good.stdout, good.stdout
        assert re.search(r"ok    redis +127\.0\.0\.1:\d+ answers", good.stdout), good.stdout
        bad = subprocess.run([*doctor, "--token", "wrong"], cwd=ROOT, env=c.env, capture_output=True, text=True,
                             timeout=120)  # fmt: skip
        assert bad.returncode == 1 and "FAIL  token" in bad.stdout and "401 wrong token" in bad.stdout
    finally:
        c.stop_all()


def test_a_sigtermed_worker_leaves_no_process_and_gives_its_device_up(cluster):
    (device,) = cluster.join("mac")
    queue = f"device-{device}"
    assert len(_processes_serving(queue)) == 1  # the Celery worker
    proc = cluster.procs.pop("device-mac")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while _processes_serving(queue) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_serving(queue) == []
    assert not cluster.ok("GET", f"/api/devices/{device}")["alive"]  # the lease is given up at once
    assert cluster.join("mac") == [device]  # and the same name takes the device back, no waiting


def test_a_killed_worker_comes_back_as_the_same_device(cluster):
    (device,) = cluster.join("mac")
    proc = cluster.procs.pop("device-mac")
    for pid in _processes_serving(f"device-{device}"):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    # Started at once: it waits out the dead worker's lease, then takes the device (id, queue) back.
    cluster.start_device("mac", threads=1)
    log = cluster.logs / "device-mac.log"
    deadline = time.monotonic() + 60
    while log.read_text().count(f"device {device} (mac, ") < 2:  # the log has the first worker's line too
        assert time.monotonic() < deadline and cluster.procs["device-mac"].poll() is None, log.read_text()[-2000:]
        time.sleep(0.2)
    cluster.wait_live([device])
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    _train(cluster, job_id)


def test_redis_restarted_without_its_data_reuses_no_id_and_workers_register_again(tmp_path):
    write_mnist(tmp_path / "data", n_train=1200, n_val=200)
    server = EmbeddedRedis().start()
    port = server.port
    c = Cluster(server.url, tmp_path / "data", tmp_path)
    try:
        c.start_api()
        before = c.join("mac-a", "mac-b")
        server.stop()
        status, reply = c.call("GET", "/api/jobs")
        assert status == 503 and "Redis does not answer" in reply["message"], reply
        server = EmbeddedRedis(port=port).start()  # empty: every job and device record is gone
        deadline = time.monotonic() + 60
        while True:
            devices = c.ok("GET", "/api/devices")["devices"]
            if sorted(d["device_id"] for d in devices if d["alive"]) == sorted(before):
                break
            assert time.monotonic() < deadline, devices
            time.sleep(0.5)
        assert {d["name"] for d in devices} == {"mac-a", "mac-b"}  # registered again by their heartbeats
        fresh = c.ok("POST", "/api/devices/register", {"name": "mac-c"})["device_id"]
        assert fresh not in before
        job_id = c.ok("POST", "/api/jobs", SMALL)["job_id"]
        init = c.ok("POST", f"/api/network/initialize/{job_id}", {"devices": before})
        assert sorted(s["device_id"] for s in init["plan"]) == sorted(before)  # ordered by their measured speeds
        _train(c, job_id)
    finally:
        c.stop_all()
        server.stop()


def test_lists_are_pages(cluster, r):
    ids = [cluster.ok("POST", "/api/jobs", SMALL)["job_id"] for _ in range(5)]
    page = cluster.ok("GET", "/api/jobs?offset=1&limit=2")
    assert [j["job_id"] for j in page["jobs"]] == ids[1:3] and page["total"] == 5
    status, reply = cluster.call("GET", "/api/jobs?limit=100000")
    assert status == 400 and reply["message"].startswith("limit: Must be"), reply


def test_deep_json_is_400(cluster):
    body = b"[" * 30_000 + b"]" * 30_000
    status, reply = cluster.call("POST", "/api/jobs", raw=body)
    assert status == 400, reply
    assert json.dumps(reply)  # a JSON answer


def test_worker_redis_user_cannot_administer(tmp_path):
    """On the LAN, workers get a Redis user of their own: what workers do, and no more."""
    server = EmbeddedRedis.persistent(tmp_path / "home", lan=True).start()
    try:
        worker = redis.Redis.from_url(server.worker_url)
        worker.xadd("s", {"a": b"1"})
        assert worker.xlen("s") == 1
        for command in (("FLUSHALL",), ("CONFIG", "GET", "requirepass"), ("ACL", "LIST"), ("KEYS", "*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.execute_command(*command)
        assert server.password not in server.worker_url
        assert server.password not in Path(f"/proc/{server.proc.pid}/cmdline").read_text()  # config came on stdin
    finally:
        server.stop()


def test_a_recovery_takes_as_many_free_devices_as_the_model_can_use(cluster):
    """Lost: one of two stages, with three devices free in the pool. The recovery plans over two of
    them (not all four live ones, which two units cannot be split over) and the job completes."""
    devices = cluster.join("a", "b", "c", "d")
    job_id = cluster.ok("POST", "/api/jobs", {**SMALL, "model_config": {"layer_sizes": [784, 32, 10]}})["job_id"]
    init = cluster.ok("POST", f"/api/network/initialize/{job_id}", {"devices": devices[:2]})
    assert sorted(s["device_id"] for s in init["plan"]) == sorted(devices[:2])
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 150, "learning_rate": 0.1})
    cluster.wait_for(job_id, lambda j: (j.get("progress") or {}).get("epoch", 0) >= 2, 60, "epoch 2")
    proc = cluster.procs.pop("device-a")
    for pid in _processes_serving(f"device-{devices[0]}"):
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    job = cluster.wait_for(job_id, lambda j: j["status"] not in ("training", "recovering"), 180, "the job to end")
    assert job["status"] == "completed", job["error"]
    (rec,) = job["recoveries"]
    assert rec["device_lost"] == devices[0] and len(rec["devices"]) == 2 and devices[0] not in rec["devices"]


def test_a_device_deleted_while_its_worker_runs_stays_deleted(cluster):
    a, b = cluster.join("mac-a", "mac-b")
    assert cluster.ok("DELETE", f"/api/devices/{a}")["device_id"] == a
    time.sleep(3 * BEAT_S)  # its worker beats meanwhile: it must not register the device again
    assert cluster.call("GET", f"/api/devices/{a}")[0] == 404
    assert [d["device_id"] for d in cluster.ok("GET", "/api/devices")["devices"]] == [b]
    assert f"device {a} was deleted through the API" in (cluster.logs / "device-mac-a.log").read_text()
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    init = cluster.ok("POST", f"/api/network/initialize/{job_id}")  # the free live devices: b alone
    assert [s["device_id"] for s in init["plan"]] == [b]
