"""The original Arceus flow over HTTP: a real API server, real Celery workers, a real Redis."""

from __future__ import annotations

import math
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from cluster import Cluster, free_port
from conftest import unlisted_keys, write_corpus

from arceus import keys
from arceus.control.jobs import JobStore
from arceus.events import EventLog
from arceus.keys import RunKeys

SEED_JOB = {
    "model_config": {"layer_sizes": [784, 128, 64, 10]},
    "dataset_config": {"name": "MNIST", "batch_size": 256, "val_batch_size": 1000,
                       "normalize": {"mean": [0.1307], "std": [0.3081]}},
}  # fmt: skip


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path)  # 6,000 learnable MNIST-format training samples


def _job_with_workers(c: Cluster, n: int = 3, job: dict = SEED_JOB) -> tuple[str, list[str]]:
    status, body = c.call("POST", "/api/jobs", job)
    assert status == 201 and body["message"] == "Job created successfully", body
    job_id, devices = body["job_id"], []
    for i in range(n):
        status, body = c.call("POST", "/api/devices/register", {"job_id": job_id, "name": f"mac-{i}"})
        assert status == 201 and body["message"] == "Device registered successfully"
        devices.append(body["device_id"])
        c.start_worker(body["device_id"])
    c.wait_live(devices)
    return job_id, devices


def _records(devices: list[dict]) -> list[dict]:
    """Devices as registered, without their leases (which age between two reads)."""
    # (A data Redis's URL is never served: none of these workers runs one, so no record holds one.)
    return [{k: v for k, v in d.items() if k != "last_seen_s"} for d in devices]


def _initialize(c: Cluster, job_id: str) -> dict:
    status, body = c.call("POST", f"/api/network/initialize/{job_id}")
    assert status == 200, body
    assert body["message"] == "Network initialized successfully"
    return body


def test_original_readme_flow_trains_the_seed_job(cluster, r):
    job_id, devices = _job_with_workers(cluster)
    init = _initialize(cluster, job_id)
    # flatten linear relu | linear relu | linear. Each worker measured its speed as it started; the
    # fastest (by 10% of the slowest stage's time, or more) takes stage 0, which holds 92% of the FLOPs.
    assert [(s["start_layer"], s["end_layer"]) for s in init["plan"]] == [(0, 3), (3, 5), (5, 6)]
    assert sorted(s["device_id"] for s in init["plan"]) == sorted(devices)
    speeds = {d["device_id"]: d["gflops"] for d in cluster.call("GET", "/api/devices")[1]["devices"]}
    assert all(g > 0 for g in speeds.values()) and len(speeds) == 3
    # Each stage's compute a batch is expected from its layers' cost, which a worker timed (as matmul
    # FLOPs of its CPU), over its device's speed. Timed, the last stage's small layer costs far more
    # than its FLOPs at matmul speed say (a call's overhead is most of it); the first, a big matmul, not.
    assert cluster.call("GET", f"/api/jobs/{job_id}")[1]["cost_model"].startswith("measured: each unit's time on")
    by_flops = [s["flops"] * 256 / (speeds[s["device_id"]] * 1e9) * 1e3 for s in init["plan"]]
    over = [s["expected_ms"] / f for s, f in zip(init["plan"], by_flops, strict=True)]
    assert all(o > 0 for o in over) and over[2] > 2 * over[0]
    status, body = cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 5, "learning_rate": 0.1})
    assert status == 200
    assert {k: body[k] for k in ("message", "epochs", "learning_rate")} == {
        "message": "Training started", "epochs": 5, "learning_rate": 0.1
    }  # fmt: skip
    job = cluster.wait_for(job_id, lambda j: j["status"] in ("completed", "failed"), 180, "training to end")
    assert job["status"] == "completed", job["error"]
    assert job["final_metrics"]["epoch"] == 5
    assert job["final_metrics"]["val_accuracy"] > 0.9  # chance is 0.1: only real learning gets here
    status, metrics = cluster.call("GET", f"/api/jobs/{job_id}/metrics")
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3, 4, 5]
    assert {s["stage"] for s in metrics["stages"]} == {0, 1, 2}
    status, tf = cluster.call("GET", "/api/previous_teraflops")
    rows = [r for r in tf["teraflops"] if r["job_id"] == job_id]
    assert sorted(r["device_id"] for r in rows) == sorted(devices)
    # Stage 0 (784x128, no input gradient): 4 x 784 x 128 FLOPs per sample (+ bias terms) x 30,000 samples.
    stage0 = next(r for r in rows if r["stage"] == 0)
    assert stage0["flops"] == (2 * (2 * 784 * 128 + 128) + 0) * 30_000
    assert 0 < stage0["teraflops"] < 10
    # GET /api/jobs/<id> shows each stage's estimates; the FLOPs are those previous_teraflops counts.
    plan0 = job["plan"][0]
    assert plan0["params"] == 784 * 128 + 128 and stage0["flops"] == plan0["flops"] * 30_000
    assert plan0["memory_bytes"] == 4 * plan0["params"] * 4 + 4 * 256 * (784 + 784 + 128)  # + a batch of inputs
    status, listing = cluster.call("GET", "/api/jobs")
    assert [j["job_id"] for j in listing["jobs"]] == [job_id]
    # The response schemas serialize every field the store and the stages wrote, and drop none.
    events = _events(r, RunKeys(job_id, job["run_id"]))
    assert metrics["epochs"] == [e for e in events if e["type"] == "epoch"]
    assert metrics["stages"] == [e for e in events if e["type"] == "stage"]
    assert job["final_metrics"] == metrics["epochs"][-1]
    assert tf["teraflops"] == JobStore(r).teraflops()
    listed = cluster.call("GET", "/api/devices")[1]["devices"]
    assert _records(listed) == _records(JobStore(r).devices.all()) == _records(job["devices"])
    assert not unlisted_keys(r)  # every key the API, the workers and the stages wrote is in arceus.keys


SMALL_CNN = {
    "model_config": {"layers": [
        {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "conv2d", "out_channels": 16, "kernel_size": 3, "padding": 1}, {"type": "relu"},
        {"type": "maxpool2d", "kernel_size": 2},
        {"type": "flatten"}, {"type": "linear", "out_features": 10}]},
    "dataset_config": {"name": "MNIST", "batch_size": 128, "val_batch_size": 500},
}  # fmt: skip


def test_a_model_too_costly_to_time_is_planned_by_its_flops_and_the_job_says_so(cluster):
    """Two 1024-channel convolutions on 28x28: ~44 GFLOP a sample to train, far over what a worker
    spends timing units (engine.unitcost's budget), so it refuses before building any, and the plan
    counts FLOPs instead, with the reason in the job."""
    wide_conv = {"type": "conv2d", "out_channels": 1024, "kernel_size": 3, "padding": 1}
    job = {"model_config": {"layers": [wide_conv, {"type": "relu"}, wide_conv, {"type": "flatten"},
                                       {"type": "linear", "out_features": 10}]},
           "dataset_config": {"name": "MNIST", "batch_size": 16, "val_batch_size": 16}}  # fmt: skip
    job_id, (device,) = _job_with_workers(cluster, 1, job)
    started = time.monotonic()
    init = _initialize(cluster, job_id)
    assert time.monotonic() - started < 60  # refused at once, not timed out
    assert [(s["device_id"], s["start_layer"], s["end_layer"]) for s in init["plan"]] == [(device, 0, 5)]
    record = cluster.call("GET", f"/api/jobs/{job_id}")[1]
    assert record["cost_model"] == (
        f"FLOPs: timing the units on device {device} would take too long or not fit its memory"
    ), record["cost_model"]


def test_a_cnn_trains_through_the_api(cluster):
    job_id, devices = _job_with_workers(cluster, 3, SMALL_CNN)
    init = _initialize(cluster, job_id)
    # Pooling and activations stay with the convolution before them; (B, 8, 14, 14) and (B, 16, 7, 7) travel.
    assert [(s["start_layer"], s["end_layer"]) for s in init["plan"]] == [(0, 3), (3, 7), (7, 8)]
    body = {"epochs": 2, "learning_rate": 0.05, "momentum": 0.9, "micro_batches": 2}
    assert cluster.call("POST", f"/api/network/train/{job_id}", body)[0] == 200
    job = cluster.wait_for(job_id, lambda j: j["status"] in ("completed", "failed"), 240, "training to end")
    assert job["status"] == "completed", job["error"]
    assert job["final_metrics"]["val_accuracy"] > 0.9, job["final_metrics"]
    # The job shows each layer as given, with torch's defaults for the fields left out.
    returned = job["model_config"]["layers"]
    assert [given.items() <= shown.items() for given, shown in zip(SMALL_CNN["model_config"]["layers"], returned,
                                                                       strict=True)] == [True] * 8  # fmt: skip
    assert returned[0]["stride"] == 1 and returned[2]["stride"] is None  # a pool's stride defaults to its kernel
    # Each link's wire (the default is auto) was picked at initialize from what its two ends measured.
    links = [s["link"] for s in job["plan"]]
    assert links[2] is None and [link["to_stage"] for link in links[:2]] == [1, 2]
    assert all(link["wire"] in ("fp32", "int8") and link["reason"] and link["ms"][link["wire"]] > 0
               for link in links[:2])  # fmt: skip
    assert [d["link"]["codecs"].keys() for d in init["devices"]] == [{"out"}, {"in", "out"}, {"in"}]
    _, metrics = cluster.call("GET", f"/api/jobs/{job_id}/metrics")
    stage0 = next(s for s in metrics["stages"] if s["stage"] == 0 and s["epoch"] == 2)
    # Activations of 8 x 14 x 14 values a sample in the chosen wire (plus a small header; int8 adds block scales).
    per_value = {"fp32": 4, "int8": 1}[links[0]["wire"]]
    assert per_value * 8 * 14 * 14 <= stage0["bytes_wire"] / 6000 < per_value * 8 * 14 * 14 * 1.2
    bad = {"model_config": {"layers": [{"type": "flatten"}, {"type": "linear", "in_features": 100,
                                                             "out_features": 10}]}}  # fmt: skip
    status, resp = cluster.call("POST", "/api/jobs", bad)
    assert status == 400 and resp["message"].startswith("model_config.layers[1].in_features: is 100, but"), resp


def test_a_character_gpt_trains_through_the_api(cluster):
    """A byte-level GPT on a generated corpus, over 2 workers: the loss falls well below the
    corpus's unigram entropy, which is all a model that ignores the context could reach."""
    unigram = write_corpus(cluster.settings.data_dir / "corpus.txt")
    layers = [
        {"type": "embedding", "num_embeddings": 256, "embedding_dim": 32},
        {"type": "positional_embedding", "num_positions": 32, "embedding_dim": 32},
        {"type": "transformer_block", "d_model": 32, "n_heads": 2, "mlp_ratio": 4, "dropout": 0.0},
        {"type": "layernorm"}, {"type": "linear", "out_features": 256},
    ]  # fmt: skip
    job = {"model_config": {"layers": layers}, "dataset_config": {"name": "text", "path": "corpus.txt",
           "block_size": 32, "batch_size": 16, "val_batch_size": 64}}  # fmt: skip
    job_id, _ = _job_with_workers(cluster, 2, job)
    init = _initialize(cluster, job_id)
    # Two contiguous ranges; where the cut falls follows the speeds the two workers measured (they share
    # this machine), so it is not asserted here (tests/test_partition.py checks the planner).
    ranges = [(s["start_layer"], s["end_layer"]) for s in init["plan"]]
    assert len(ranges) == 2 and ranges[0][0] == 0 and ranges[0][1] == ranges[1][0] and ranges[1][1] == 5
    body = {"epochs": 3, "learning_rate": 0.3, "momentum": 0.9}
    assert cluster.call("POST", f"/api/network/train/{job_id}", body)[0] == 200
    job = cluster.wait_for(job_id, lambda j: j["status"] in ("completed", "failed"), 240, "training to end")
    assert job["status"] == "completed", job["error"]
    final = job["final_metrics"]
    assert final["val_loss"] < 0.5 * unigram, (final, unigram)
    assert final["val_bits_per_byte"] < 0.5 * unigram / math.log(2) and final["tokens_per_s"] > 0


def test_restarting_the_api_loses_nothing(cluster):
    job_id, _ = _job_with_workers(cluster, 2)
    _initialize(cluster, job_id)
    cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 6, "learning_rate": 0.1})
    before = cluster.wait_for(job_id, lambda j: "progress" in j, 60, "training progress")
    cluster.kill("api")
    cluster.start_api()
    after = cluster.call("GET", f"/api/jobs/{job_id}")[1]
    assert after["status"] in ("training", "completed") and after["run_id"] == before["run_id"]
    assert _records(after["devices"]) == _records(before["devices"])
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 180, "training to end")
    assert job["status"] == "completed", job["error"]


def test_stop_ends_training_within_seconds(cluster, r):
    job_id, _ = _job_with_workers(cluster, 3)
    _initialize(cluster, job_id)
    cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 500, "learning_rate": 0.1})
    job = cluster.wait_for(job_id, lambda j: "progress" in j, 60, "training progress")
    status, body = cluster.call("DELETE", f"/api/jobs/{job_id}")
    assert status == 409 and "stop it" in body["message"]
    t0 = time.monotonic()
    status, body = cluster.call("POST", f"/api/network/stop/{job_id}")
    assert status == 200 and body["message"] == "Training stopped"
    run = RunKeys(job_id, job["run_id"])
    while time.monotonic() - t0 < 10:  # every stage's task has ended
        errors = [e for e in _events(r, run) if e["type"] == "error"]
        if len(errors) == 3:
            break
        time.sleep(0.2)
    assert len(errors) == 3 and all("stopped by the user" in e["reason"] for e in errors)
    assert cluster.call("GET", f"/api/jobs/{job_id}")[1]["status"] == "stopped"
    status, body = cluster.call("POST", f"/api/network/stop/{job_id}")
    assert status == 409
    # A stopped run leaves stages at different steps: training again needs a fresh initialize.
    status, body = cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 1})
    assert status == 409 and "initialize it again" in body["message"]
    _initialize(cluster, job_id)
    cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 1, "learning_rate": 0.1})
    job = cluster.wait_for(job_id, lambda j: j["status"] != "training", 120, "the second run to end")
    assert job["status"] == "completed", job["error"]


def test_a_killed_worker_fails_a_job_that_may_not_recover_with_a_reason(cluster, r):
    job_id, devices = _job_with_workers(cluster, 3)
    plan = _initialize(cluster, job_id)["plan"]
    stage = next(s["stage"] for s in plan if s["device_id"] == devices[1])  # the order follows measured speeds
    body = {"epochs": 500, "learning_rate": 0.1, "max_recoveries": 0}
    cluster.call("POST", f"/api/network/train/{job_id}", body)
    cluster.wait_for(job_id, lambda j: "progress" in j, 60, "training progress")
    cluster.kill(f"worker-{devices[1]}")
    t0 = time.monotonic()
    job = cluster.wait_for(job_id, lambda j: j["status"] not in ("training", "recovering"), 30, "the job to fail")
    assert job["status"] == "failed"
    # The cause: its silence, as the supervisor saw it or as a neighbour stage reported it first.
    assert re.search(rf"device {devices[1]} \(stage {stage}\) was lost \(.*no heartbeat for \d+s", job["error"])
    assert "max_recoveries=0" in job["error"]
    assert time.monotonic() - t0 < 20
    # What the failed run leaves behind goes: its streams at once, the rest (events, liveness) expires.
    run = RunKeys(job_id, job["run_id"])
    deadline = time.monotonic() + 10
    while r.exists(run.fwd(1)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [k.decode() for k in r.scan_iter(match=run.pattern)]
    assert not [k for k in left if ":fwd:" in k or ":bwd:" in k]
    assert left and all(0 < r.ttl(k) <= keys.RESULTS_TTL_S for k in left), {k: r.ttl(k) for k in left}


def _events(r, run: RunKeys) -> list[dict]:
    return EventLog(r, run).all()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model_config": {"layer_sizes": [784]}}, "model_config.layer_sizes"),
        ({"model_config": {"layer_sizes": [784, 0, 10]}}, "model_config.layer_sizes.1"),
        ({"model_config": {"layer_sizes": [784, 10]}, "dataset_config": {"name": "CIFAR"}}, "dataset_config.name"),
        ({"model_config": {"layer_sizes": [784, 10]}, "dataset_config": {"batch_size": 0}},
         "dataset_config.batch_size"),
        ({"model_config": {"layer_sizes": [784, 10]}, "colour": "red"}, "colour"),
        ({"dataset_config": {}}, "model_config"),
    ],
)  # fmt: skip
def test_invalid_job_configs_are_400_naming_the_field(cluster, body, field):
    status, resp = cluster.call("POST", "/api/jobs", body)
    assert status == 400
    assert resp["message"].startswith(f"{field}:") or f"; {field}:" in resp["message"], resp


def test_errors_are_json_with_the_right_status(cluster):
    c = cluster
    assert c.call("GET", "/api/jobs/nope") == (404, {"code": 404, "status": "Not Found",
                                                      "message": "job 'nope' does not exist"})  # fmt: skip
    assert c.call("DELETE", "/api/devices/999")[0] == 404
    assert c.call("POST", "/api/network/train/nope", {"epochs": 1})[0] == 404
    status, resp = c.call("POST", "/api/devices/register", {"job_id": "nope"})
    assert status == 404 and "nope" in resp["message"]

    _, body = c.call("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 10]}})
    job_id = body["job_id"]
    status, resp = c.call("POST", f"/api/network/train/{job_id}", {"epochs": 1})
    assert status == 409 and "initialize it first" in resp["message"]
    status, resp = c.call("POST", f"/api/network/initialize/{job_id}")
    assert status == 409 and "no devices" in resp["message"]
    a = c.call("POST", "/api/devices/register", {"job_id": job_id, "name": "a"})
    assert a[0] == 201
    status, resp = c.call("POST", "/api/devices/register", {"job_id": job_id, "name": "a"})
    assert status == 409 and f"a live device named 'a' is registered (device {a[1]['device_id']}," in resp["message"]
    assert c.call("POST", "/api/devices/register", {"job_id": job_id, "name": "b"})[0] == 201
    # Registered, but no worker serves them: refused at once, saying what to run.
    status, resp = c.call("POST", f"/api/network/initialize/{job_id}")
    assert status == 409 and f"celery -A workers worker -Q device-{a[1]['device_id']}" in resp["message"]
    status, resp = c.call("POST", f"/api/network/initialize/{job_id}", {"devices": ["0123456789ab"]})
    assert status == 404 and "['0123456789ab'] do not exist" in resp["message"]
    status, resp = c.call("POST", f"/api/network/initialize/{job_id}", {"devices": ["../x"]})
    assert status == 400 and resp["message"].startswith("devices.0:")
    job = c.call("GET", f"/api/jobs/{job_id}")[1]
    assert job["status"] == "created" and job["plan"] is None  # a refused initialize changes nothing
    status, resp = c.call("POST", f"/api/network/train/{job_id}", {"epochs": 0})
    assert status == 400 and resp["message"].startswith("epochs:")
    status, resp = c.call("POST", f"/api/network/train/{job_id}", {"epochs": 1, "wire": "int4"})
    assert status == 400 and resp["message"].startswith("wire:")
    status, resp = c.call("POST", "/api/jobs", raw=b'{"model_config": ' + b" " * 70_000 + b"}")
    assert status == 413
    status, resp = c.call("POST", "/api/jobs", raw=b"{not json")
    assert status == 400


def test_a_job_whose_activations_no_stage_could_receive_is_refused_when_created(cluster):
    """Activations over the payload limit (batch 65,536 x 2,048 wide) would fail every stage:
    the API says so when the job is created."""
    job = {"model_config": {"layer_sizes": [784, 2048, 10]}, "dataset_config": {"batch_size": 65536}}
    status, resp = cluster.call("POST", "/api/jobs", job)
    assert status == 400, resp
    assert resp["message"].startswith("dataset_config.batch_size: a batch of 65536 rows x 2048 values")


def test_a_model_over_the_parameter_cap_is_refused_when_created(cluster):
    status, resp = cluster.call("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 65536, 65536, 10]}})
    assert status == 400 and "4,347,133,962 parameters, more than this cluster's cap" in resp["message"], resp
    assert cluster.call("GET", "/api/jobs")[1]["total"] == 0


def test_a_plan_that_cannot_fit_the_memory_the_devices_reported_is_409_naming_the_device(cluster):
    _, body = cluster.call("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 4096, 4096, 10]}})
    job_id = body["job_id"]
    devs = [
        cluster.call("POST", "/api/devices/register", {"job_id": job_id, "name": f"small-{i}", "memory_gb": 0.05})[1][
            "device_id"
        ]
        for i in range(2)
    ]
    for d in devs:  # live workers, whose shards would not fit: refused before any of them allocates
        cluster.start_worker(d)
    cluster.wait_live(devs)
    status, resp = cluster.call("POST", f"/api/network/initialize/{job_id}")
    assert status == 409, resp
    assert f"device {devs[0]} reported 51.2 MiB, but stage 0 (layers [0, 3)) needs about 54.6 MiB" in resp["message"]
    job = cluster.call("GET", f"/api/jobs/{job_id}")[1]
    assert job["status"] == "created" and job["plan"] is None  # a refused initialize changes nothing


def test_openapi_document_lists_the_original_paths(cluster):
    status, doc = cluster.call("GET", "/api/openapi.json")
    assert status == 200
    for path in ("/api/jobs", "/api/jobs/{job_id}", "/api/devices/register", "/api/network/initialize/{job_id}",
                 "/api/network/train/{job_id}", "/api/network/stop/{job_id}", "/api/previous_teraflops"):  # fmt: skip
        assert path in doc["paths"], path


def test_flower_lists_the_workers(cluster):
    job_id, devices = _job_with_workers(cluster, 2)
    _initialize(cluster, job_id)  # the workers have run a task each
    port = free_port()
    cluster.start_flower(port)
    base = f"http://127.0.0.1:{port}"
    cluster.wait_http("/api/workers", timeout=60, base=base)
    deadline = time.monotonic() + 30
    import json
    import urllib.request

    while True:
        with urllib.request.urlopen(base + "/api/workers?refresh=1", timeout=20) as resp:
            workers = json.loads(resp.read())
        names = sorted(workers)
        if len(names) == 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert [n.split("@")[0] for n in names] == sorted(f"device-{d}" for d in devices)  # ids are random: by name


def test_openapi_document_describes_the_responses(cluster):
    _, doc = cluster.call("GET", "/api/openapi.json")
    schemas = doc["components"]["schemas"]

    def response(path: str, method: str, status: str = "200") -> dict:
        ref = doc["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[-1]]["properties"]

    job = response("/api/jobs/{job_id}", "get")
    assert {"status", "error", "devices", "plan", "progress", "latest_metrics", "final_metrics"} <= set(job)
    metrics = response("/api/jobs/{job_id}/metrics", "get")
    assert {"epochs", "stages"} <= set(metrics)
    assert "items" in metrics["stages"] and "peak_saved_mb" in schemas["StageEpoch"]["properties"]
    assert "devices" in response("/api/devices", "get")
    assert "teraflops" in response("/api/previous_teraflops", "get")
    assert "run_id" in response("/api/network/train/{job_id}", "post")
    assert "plan" in response("/api/network/initialize/{job_id}", "post")
    # Training options are documented with the defaults the API applies.
    train = schemas["Train"]["properties"]
    assert train["epochs"]["default"] == 10 and train["wire"]["enum"] == ["auto", "fp32", "fp16", "int8"]


def test_changing_the_devices_of_a_ready_job_voids_its_plan(cluster):
    job_id, devices = _job_with_workers(cluster, 2)
    _initialize(cluster, job_id)
    # The machine goes: its worker stops and its device is deleted.
    cluster.kill(f"worker-{devices[1]}", signal.SIGTERM)
    assert cluster.call("DELETE", f"/api/devices/{devices[1]}")[0] == 200
    job = cluster.call("GET", f"/api/jobs/{job_id}")[1]
    assert job["status"] == "created" and job["plan"] is None
    status, body = cluster.call("POST", f"/api/network/train/{job_id}", {"epochs": 1})
    assert status == 409 and "initialize it first" in body["message"]
    init = _initialize(cluster, job_id)  # one device now holds all six layers
    assert [(s["start_layer"], s["end_layer"]) for s in init["plan"]] == [(0, 6)]


def test_a_device_is_deleted_only_once_no_job_is_choosing_devices(cluster, r):
    job_id = cluster.ok("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 10]}})["job_id"]
    device = cluster.ok("POST", "/api/devices/register", {"job_id": job_id, "name": "a"})["device_id"]
    with ThreadPoolExecutor(1) as pool:
        with JobStore(r).planning():  # as an initialize holds it between choosing devices and reserving them
            delete = pool.submit(cluster.call, "DELETE", f"/api/devices/{device}")
            time.sleep(1.0)
            assert not delete.done() and cluster.call("GET", f"/api/devices/{device}")[0] == 200
        assert delete.result(timeout=15)[0] == 200
    assert cluster.call("GET", f"/api/devices/{device}")[0] == 404


def test_arceus_worker_registers_serves_its_queue_and_unregisters(cluster):
    import subprocess
    import sys

    from cluster import ROOT

    _, body = cluster.call("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 10]}})
    job_id = body["job_id"]
    device = None
    proc = subprocess.Popen(
        [sys.executable, "-m", "arceus.cli", "worker", "--api-url", cluster.base, "--job-id", job_id,
         "--name", "laptop"],
        cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        job = cluster.wait_for(job_id, lambda j: j["devices"], 60, "the worker to register")
        device = job["devices"][0]
        assert device["name"] == "laptop" and device["memory_gb"] > 0
        assert device["torch_device"].split(":")[0] in ("cpu", "cuda", "mps")
        assert device["host"] and device["torch"]
        cluster.wait_live([device["device_id"]])
        # The Celery worker measured its device as it started, with the threads it trains with.
        job = cluster.wait_for(job_id, lambda j: j["devices"][0].get("gflops"), 30, "the worker's measurements")
        measured = job["devices"][0]
        assert measured["gflops"] > 0 and 0 < measured["free_memory_gb"] <= measured["memory_gb"]
        assert measured["code"] == cluster.ok("GET", "/api/cluster")["code"]  # the same tree: the same code id
        status, init = cluster.call("POST", f"/api/network/initialize/{job_id}")  # served by that worker
        assert status == 200 and init["devices"][0]["device_id"] == device["device_id"]
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # never leave a worker serving device-N for the tests after this one
            output, _ = proc.communicate()
            raise AssertionError(f"arceus worker ignored Ctrl-C for 60 s:\n{output}") from None
    assert device is not None, output
    assert f"device {device['device_id']} (laptop, " in output
    assert f"device {device['device_id']} stopped serving" in output
    after = cluster.ok("GET", f"/api/devices/{device['device_id']}")  # kept for its return, lease given up
    assert not after["alive"] and after["name"] == "laptop"


def test_a_machine_that_runs_other_code_takes_no_part_in_a_job(cluster, tmp_path):
    import shutil
    import subprocess
    import sys

    from cluster import ROOT

    # A machine left on another commit: this tree's packages with one comment more.
    other = tmp_path / "other"
    for package in ("arceus", "workers"):
        shutil.copytree(ROOT / package, other / package, ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "arceus" / "keys.py", "a") as f:
        f.write("# another commit\n")
    env, ours = {**cluster.env, "PYTHONPATH": str(other)}, cluster.ok("GET", "/api/cluster")["code"]
    # `arceus worker --join` refuses at once, naming both.
    joined = subprocess.run(
        [sys.executable, "-m", "arceus.cli", "worker", "--join", cluster.base, "--name", "stale"],
        cwd=other, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert joined.returncode == 2, joined.stdout + joined.stderr  # an error of ours (cli.main)
    theirs = re.search(r"this machine runs Arceus \S+ \(code ([0-9a-f]{12})\)", joined.stderr).group(1)
    assert theirs != ours and f"the cluster's API at {cluster.base} runs code {ours}" in joined.stderr
    assert not cluster.ok("GET", "/api/devices")["devices"]  # it registered nothing
    doctor = subprocess.run([sys.executable, "-m", "arceus.cli", "doctor", "--join", cluster.base], cwd=other,
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert doctor.returncode == 1, doctor.stdout
    assert re.search(rf"FAIL  code +this machine runs Arceus code {theirs}, the API code {ours}", doctor.stdout)
    # The original flow (a device registered by hand, served by that tree's `celery -A workers worker`):
    # the worker says what it runs, and the job is refused before any worker is asked for anything.
    job_id = cluster.ok("POST", "/api/jobs", SEED_JOB)["job_id"]
    device = cluster.ok("POST", "/api/devices/register", {"job_id": job_id, "name": "stale"})
    queue = device["queue"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", queue, "-n", f"{queue}@%h"],
        cwd=other, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        cluster.wait_live([device["device_id"]])
        assert cluster.ok("GET", f"/api/devices/{device['device_id']}")["code"] == theirs
        status, body = cluster.call("POST", f"/api/network/initialize/{job_id}")
        assert status == 409, body
        said = body["message"]
        assert said.startswith(f"device {device['device_id']} (stale) runs Arceus code {theirs}, and this API runs ")
        assert f"(code {ours}): every machine must run the same Arceus" in said
        assert cluster.ok("GET", f"/api/jobs/{job_id}")["status"] == "created"
        # A job with no devices of its own plans over the pool, which leaves that device out.
        pool_job = cluster.ok("POST", "/api/jobs", SEED_JOB)["job_id"]
        status, body = cluster.call("POST", f"/api/network/initialize/{pool_job}")
        assert status == 409 and body["message"].startswith(f"device {device['device_id']} (stale) runs "), body
        cluster.start_device("fresh", threads=1)
        cluster.wait_for_workers(2)
        (fresh,) = [d["device_id"] for d in cluster.ok("GET", "/api/devices")["devices"] if d["name"] == "fresh"]
        plan = cluster.ok("POST", f"/api/network/initialize/{pool_job}")["plan"]
        assert {s["device_id"] for s in plan} == {fresh}
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_a_run_whose_workers_are_all_gone_fails_instead_of_hanging(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path, tmp_path)
    c.start_api(recv_timeout_s=3)  # stages get 3 s to start; the API waits that plus 10 s
    try:
        _, body = c.call("POST", "/api/jobs", {"model_config": {"layer_sizes": [784, 10]},
                                               "dataset_config": {"name": "digits"}})  # fmt: skip
        job_id = body["job_id"]
        _, dev = c.call("POST", "/api/devices/register", {"job_id": job_id})
        c.start_worker(dev["device_id"])
        c.wait_live([dev["device_id"]])
        _initialize(c, job_id)
        c.kill(f"worker-{dev['device_id']}")  # gone before its run_stage task is sent
        assert c.call("POST", f"/api/network/train/{job_id}", {"epochs": 1})[0] == 200
        job = c.wait_for(job_id, lambda j: j["status"] != "training", 40, "the job to be failed")
        assert job["status"] == "failed" and "no stage of run" in job["error"]
        assert f"devices ['{dev['device_id']}'] up?" in job["error"]
    finally:
        c.stop_all()


def test_the_swagger_page_needs_nothing_from_the_internet(cluster):
    import re
    import urllib.request

    with urllib.request.urlopen(cluster.base + "/api/docs", timeout=10) as resp:
        html = resp.read().decode()
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs and all(ref.startswith("/api/docs/assets/") for ref in refs), refs
    for ref in refs:
        with urllib.request.urlopen(cluster.base + ref, timeout=10) as resp:
            assert resp.status == 200 and len(resp.read()) > 1000, ref
    doc = cluster.ok("GET", "/api/openapi.json")  # its Authorize button sends the token
    assert doc["components"]["securitySchemes"]["token"] == {"type": "http", "scheme": "bearer"}
    assert doc["paths"]["/api/health"]["get"]["security"] == []
