"""The live side of the API against real workers and runs: a job's event feed (SSE), Prometheus
metrics, the browser's sign-in cookie, and the CLI commands that cover the REST API."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import redis
from cluster import ROOT, SMALL, Cluster
from prometheus_client.parser import text_string_to_metric_families

from api.events import MAX_FEEDS
from arceus.control.client import ApiClient
from arceus.control.jobs import JobStore


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path, mnist=(1200, 200))


def _feed(c: Cluster, job_id: str, last_id: str | None = None) -> list[tuple[str | None, dict]]:
    """Every (id, event) of the job's feed until it ends, read raw off the socket."""
    headers = {"Last-Event-ID": last_id} if last_id else {}
    req = urllib.request.Request(f"{c.base}/api/jobs/{job_id}/events", headers=headers)
    out, data, event_id = [], [], None
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        for raw in resp:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line[6:])
            elif line.startswith("id: "):
                event_id = line[4:]
            elif not line and data:
                out.append((event_id, json.loads("".join(data))))
                data, event_id = [], None
    return out


def test_the_feed_streams_a_run_as_it_happens_and_resumes_from_any_event(cluster):
    cluster.join("a", "b")
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    live: list[tuple[float, dict]] = []

    def read() -> None:
        for ev in ApiClient(cluster.base).events(f"/api/jobs/{job_id}/events"):
            live.append((time.monotonic(), ev))

    reader = threading.Thread(target=read)
    reader.start()  # before the run starts: the feed waits for it
    time.sleep(1.0)
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 2})
    reader.join(timeout=120)
    assert not reader.is_alive()
    kinds = [ev["type"] for _, ev in live]
    states = [ev["status"] for _, ev in live if ev["type"] == "state"]
    assert states == ["created", "initializing", "ready", "training", "completed"], kinds
    assert [ev["epoch"] for _, ev in live if ev["type"] == "epoch"] == [1, 2]
    assert kinds[-1] == "end" and "progress" in kinds and kinds.count("stage") == 4  # 2 stages x 2 epochs
    assert "checkpoint_part" not in kinds  # the stages' own bookkeeping stays inside
    # Streamed, not sent at the end: the first epoch arrived before the job completed.
    first_epoch = next(t for t, ev in live if ev["type"] == "epoch")
    completed = next(t for t, ev in live if ev.get("status") == "completed")
    assert first_epoch < completed

    # Read again raw: the same story; from any event's id, exactly the rest of it.
    whole = _feed(cluster, job_id)
    assert [ev for _, ev in whole] == [ev for _, ev in live]
    assert all(i for i, ev in whole)
    for cut in (0, kinds.index("epoch"), len(whole) - 2):
        rest = _feed(cluster, job_id, whole[cut][0])
        assert [ev for _, ev in rest] == [ev for _, ev in whole[cut + 1 :]], cut

    # A train whose tasks could not be sent puts the old run id back: that starts no run, and the
    # feed does not replay the old run (JobStore as Control.train does it).
    store = JobStore(redis.Redis.from_url(cluster.redis_url))
    old_run = cluster.ok("GET", f"/api/jobs/{job_id}")["run_id"]
    store.transition(job_id, "training", allowed_from=("completed",), run_id="never-sent")
    store.transition(job_id, "completed", allowed_from=("training",), run_id=old_run, error="broker down")
    # Trained again: the new run's events once each, after the old run's.
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 1})
    cluster.wait_for(job_id, lambda j: j["status"] == "completed" and j["run_id"] != old_run, 120, "the 2nd run")
    again = [ev for _, ev in _feed(cluster, job_id)]
    assert again[: len(whole) - 1] == [ev for _, ev in whole[:-1]]  # the story so far, once
    rest = again[len(whole) - 1 :]
    assert [(ev.get("status"), ev.get("new_run")) for ev in rest if ev["type"] == "state"] == [
        ("training", True), ("completed", False), ("training", True), ("completed", False)]  # fmt: skip
    assert [ev["type"] for ev in rest].count("epoch") == 1 and rest[-1]["type"] == "end"

    status, reply = cluster.call("GET", f"/api/jobs/{job_id}/events?after=nonsense")
    assert status == 400 and "not an event id" in reply["message"]
    status, reply = cluster.call("GET", f"/api/jobs/{job_id}/events?after=1-{2**64}/x/0-0")
    assert status == 400 and "not an event id" in reply["message"]  # beyond a Redis entry id
    status, reply = cluster.call("GET", "/api/jobs/nope/events")
    assert status == 404 and "nope" in reply["message"]


def test_feeds_are_capped_so_they_never_take_every_thread(cluster):
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]  # created: its feed waits
    opened = []
    try:
        for _ in range(MAX_FEEDS):
            resp = urllib.request.urlopen(f"{cluster.base}/api/jobs/{job_id}/events", timeout=30)
            assert resp.readline().startswith(b"retry:")
            opened.append(resp)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{cluster.base}/api/jobs/{job_id}/events", timeout=30)
        assert refused.value.code == 503 and b"live feeds are open" in refused.value.read()
        assert cluster.ok("GET", "/api/health")["status"] == "ok"  # the rest of the API answers meanwhile
        # A feed whose reader left gives its place back (found at its next keep-alive).
        opened.pop().close()
        deadline = time.monotonic() + 20
        while True:
            try:
                resp = urllib.request.urlopen(f"{cluster.base}/api/jobs/{job_id}/events", timeout=30)
                opened.append(resp)
                break
            except urllib.error.HTTPError as e:
                assert e.code == 503 and time.monotonic() < deadline
                time.sleep(0.5)
    finally:
        for resp in opened:
            resp.close()


def _metrics(c: Cluster) -> dict[str, list]:
    with urllib.request.urlopen(f"{c.base}/metrics", timeout=30) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _value(samples: list, **labels: str) -> float:
    (found,) = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    return found


def test_prometheus_metrics_carry_jobs_devices_stages_and_requests(cluster):
    cluster.join("a", "b")
    job_id = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    idle = cluster.ok("POST", "/api/jobs", SMALL)["job_id"]
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 2})
    job = cluster.wait_for(job_id, lambda j: j["status"] == "completed", 120, "the run")
    m = _metrics(cluster)
    assert _value(m["arceus_jobs"], status="completed") == 1 and _value(m["arceus_jobs"], status="created") == 1
    assert _value(m["arceus_devices_alive"]) == 2 and _value(m["arceus_devices"]) == 2
    last = job["final_metrics"]
    assert _value(m["arceus_job_val_accuracy"], job=job_id) == pytest.approx(last["val_accuracy"])
    assert _value(m["arceus_job_samples_per_second"], job=job_id) == pytest.approx(last["samples_per_s"])
    assert _value(m["arceus_job_epoch"], job=job_id) == 2
    stages = cluster.ok("GET", f"/api/jobs/{job_id}/metrics")["stages"]
    for stage in (0, 1):
        row = [s for s in stages if s["stage"] == stage and s["epoch"] == 2][0]
        assert _value(m["arceus_stage_sent_bytes"], job=job_id, stage=str(stage)) == row["bytes_wire"] > 0
        assert _value(m["arceus_stage_utilization"], job=job_id, stage=str(stage)) == pytest.approx(row["utilization"])
        assert _value(m["arceus_stage_wait_seconds"], job=job_id, stage=str(stage)) == pytest.approx(row["wait_s"])
    assert not [s for s in m["arceus_job_val_accuracy"] if s.labels["job"] == idle]  # nothing trained: no figure
    # The API's own requests, by route: the polls above among them, with their latencies.
    polls = _value(m["arceus_api_requests"], method="GET", route="/api/jobs/<job_id>", status="200")
    assert polls >= 1
    count = [s for s in m["arceus_api_request_seconds"] if s.name.endswith("_count")
             and s.labels == {"method": "GET", "route": "/api/jobs/<job_id>"}]  # fmt: skip
    assert count and count[0].value >= polls
    req = urllib.request.Request(f"{cluster.base}/api/jobs", method="BREW")  # any method at all
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(req, timeout=30)
    methods = {s.labels["method"] for s in _metrics(cluster)["arceus_api_requests"]}
    assert "other" in methods and "BREW" not in methods  # labels stay few, whatever is sent


def test_a_browser_signs_in_with_the_token_once_and_the_cookie_stands_for_it(redis_url, tmp_path):
    c = Cluster(redis_url, tmp_path, tmp_path, token="s3cret-token")
    c.start_api()
    try:
        for public in ("/", "/dashboard", "/dashboard/assets/app.js", "/api/health"):
            with urllib.request.urlopen(c.base + public, timeout=30) as resp:
                assert resp.status == 200, public

        def status_of(path: str, cookie: str | None = None) -> int:
            req = urllib.request.Request(c.base + path, headers={"Cookie": cookie} if cookie else {})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status
            except urllib.error.HTTPError as e:
                return e.code

        anonymous = ApiClient(c.base)
        assert status_of("/api/jobs") == 401 and status_of("/metrics") == 401 and status_of("/api/docs") == 401
        status, reply = anonymous.request("POST", "/api/session", {"token": "wrong"})
        assert status == 401 and "wrong token" in reply["message"]
        req = urllib.request.Request(c.base + "/api/session", data=b'{"token": "s3cret-token"}', method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        session = cookie.split(";")[0]
        assert "s3cret-token" not in session  # the browser never holds the token itself
        assert [status_of(p, session) for p in ("/api/jobs", "/metrics", "/api/docs")] == [200, 200, 200]
        assert status_of("/api/jobs", "arceus_session=guess") == 401
        assert status_of("/api/cluster/join", session) == 401  # the workers' Redis: for the token only

        def post(headers: dict[str, str]) -> int:
            req = urllib.request.Request(c.base + "/api/network/stop/nope", method="POST",
                                         headers={"Cookie": session, **headers})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status
            except urllib.error.HTTPError as e:
                return e.code

        # A change made with the session must come from the API's own pages: a form on another
        # service of this host (another port: the same site, so SameSite lets the cookie through)
        # is refused; the dashboard's own request gets through (to a 404: no such job).
        assert post({}) == 403
        assert post({"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:5555"}) == 403
        assert post({"Origin": "http://127.0.0.1:5555"}) == 403
        assert post({"Sec-Fetch-Site": "same-origin"}) == 404
        assert post({"Origin": c.base}) == 404
    finally:
        c.stop_all()


def _arceus(c: Cluster, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "arceus.cli", *args, "--api-url", c.base], cwd=ROOT, env=c.env,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    if ok:
        assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out


def test_the_cli_covers_the_rest_api(cluster, tmp_path):
    cluster.join("mac-a", "mac-b")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(SMALL))
    job_id = _arceus(cluster, "jobs", "create", "--job", str(spec)).stdout.strip()
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["status"] == "created"
    assert job_id in _arceus(cluster, "jobs", "list").stdout
    devices = _arceus(cluster, "devices").stdout
    assert "mac-a" in devices and "mac-b" in devices and devices.count(" yes ") == 2
    init = _arceus(cluster, "init", job_id).stdout
    assert "stage 0: layers [0, " in init and "stage 1" in init
    stop = _arceus(cluster, "stop", job_id, ok=False)
    assert stop.returncode == 2 and "409" in stop.stderr and "ready" in stop.stderr

    train = _arceus(cluster, "train", job_id, "--epochs", "2", "--lr", "0.05")
    lines = train.stdout.splitlines()
    assert len([x for x in lines if x.startswith("epoch ") and x.endswith("samples/s")]) == 2, train.stdout
    assert f"job {job_id} completed" in train.stdout
    assert "\r" not in train.stdout  # not a terminal: no progress bars
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["train_config"]["learning_rate"] == 0.05

    rows = list(csv.DictReader(io.StringIO(_arceus(cluster, "metrics", job_id, "--csv").stdout)))
    history = cluster.ok("GET", f"/api/jobs/{job_id}/metrics")["epochs"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["val_accuracy"]) for r in rows] == [e["val_accuracy"] for e in history]
    _arceus(cluster, "metrics", job_id, "--csv", "-o", str(tmp_path / "m.csv"))
    assert (tmp_path / "m.csv").read_text().startswith("epoch,epochs,train_loss,")

    # Trained again, detached; followed from another command while it runs: its run, live.
    # (60 short epochs: still training when the second command has started.)
    detached = _arceus(cluster, "train", job_id, "--epochs", "60", "--detach").stdout
    assert "arceus status" in detached
    follow = _arceus(cluster, "status", job_id, "--follow").stdout
    assert follow.startswith(f"{job_id}  training"), follow
    assert f"job {job_id} completed" in follow and "last checkpoint: step" in follow
    assert len([x for x in follow.splitlines() if x.startswith("epoch ")]) == 60, follow  # this run's only
    listed = subprocess.run([sys.executable, "-m", "arceus.cli", "jobs", "--api-url", cluster.base, "list"],
                            cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert job_id in listed.stdout, listed.stderr  # the flag before the command holds too
    show = _arceus(cluster, "jobs", "show", job_id).stdout
    assert "stage 1: layers" in show and "on mac-" in show
    assert json.loads(_arceus(cluster, "jobs", "show", job_id, "--json").stdout)["job_id"] == job_id
    local_flag = _arceus(cluster, "train", job_id, "--stages", "2", ok=False)
    assert local_flag.returncode == 2 and "--stages" in local_flag.stderr
    _arceus(cluster, "jobs", "delete", job_id)
    assert cluster.call("GET", f"/api/jobs/{job_id}")[0] == 404
    missing = _arceus(cluster, "jobs", "show", job_id, ok=False)
    assert missing.returncode == 2 and "404" in missing.stderr
