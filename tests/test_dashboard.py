"""The dashboard in a real browser (headless Chromium, driven by Playwright) against a real API,
real workers and real runs. Skipped only where no Chromium can be had (`apt-get install chromium`).

With ARCEUS_SCREENSHOTS=DIR the job page is photographed into DIR during and after a run (the
README's pictures come from `ARCEUS_SCREENSHOTS=docs/img pytest tests/test_dashboard.py`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cluster import Cluster, until_epoch

CHROMIUM = os.environ.get("ARCEUS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
# CI sets ARCEUS_BROWSER_TESTS=required: there a missing browser fails the suite instead of skipping.
REQUIRED = os.environ.get("ARCEUS_BROWSER_TESTS") == "required"
if REQUIRED:
    assert CHROMIUM, "ARCEUS_BROWSER_TESTS=required, but there is no chromium on PATH (apt-get install chromium)"
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="no Chromium to drive: `apt-get install chromium` (or set ARCEUS_CHROMIUM to one)"
)

JOB = {"model_config": {"layer_sizes": [784, 64, 32, 10]}, "dataset_config": {"name": "MNIST", "batch_size": 100}}
TIMEOUT_MS = 60_000
sync_api.expect.set_options(timeout=TIMEOUT_MS)  # runs take seconds on a busy machine: expect waits as long


@pytest.fixture(scope="module")
def chromium():
    with sync_api.sync_playwright() as p:
        # --no-sandbox: CI runs as root, where Chromium's sandbox cannot start.
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def cluster(redis_url, tmp_path):
    # The README's pictures: epochs long enough for a curve of steps.
    yield from Cluster.serving(redis_url, tmp_path, mnist=(30000, 2000) if _shots() else (3000, 500))


@pytest.fixture
def page(chromium, cluster):
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.requests = []  # every URL the page asks for, to prove none leaves this machine
    page.on("request", lambda r: page.requests.append(r.url))
    yield page
    context.close()


def _shots() -> Path | None:
    where = os.environ.get("ARCEUS_SCREENSHOTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
    return Path(where) if where else None


def _points(page, chart: str, series: str) -> int:
    return page.locator(f"#{chart} circle[data-series='{series}']").count()


def test_a_job_created_in_the_page_trains_with_live_curves(cluster, page):
    cluster.join("mac-a", "mac-b")
    page.goto(cluster.base + "/")
    sync_api.expect(page.locator("#devices tbody tr")).to_have_count(2)
    sync_api.expect(page.locator("#devices")).to_contain_text("alive")
    page.fill("#job-json", json.dumps(JOB))
    page.click("#create-job")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["model_config"] == JOB["model_config"]

    page.evaluate("window.loadedOnce = true")  # gone if anything reloads the page
    page.click("#initialize")
    sync_api.expect(page.locator("#status")).to_have_text("ready")
    sync_api.expect(page.locator("#plan tbody tr")).to_have_count(2)
    # What the plan counted: each layer's cost, timed by a worker.
    sync_api.expect(page.locator("#cost-model")).to_contain_text("Layer costs: measured: each unit's time on device")
    # Count the loss chart's training points each time it is drawn.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelectorAll(
            "#chart-loss circle[data-series='train']").length))
        .observe(document.getElementById('chart-loss'), {childList: true, subtree: true}); }""")
    epochs = 8 if _shots() else 3  # the README's pictures: a longer curve
    page.fill("#train-form input[name=epochs]", str(epochs))
    page.click("#train")
    page.wait_for_function("document.querySelectorAll(\"#chart-loss circle[data-series='train']\").length >= 1")
    shots = _shots()
    if shots:
        page.wait_for_function("document.querySelectorAll(\"#chart-loss circle[data-series='train']\").length >= 3")
        page.screenshot(path=str(shots / "job-training.png"), full_page=True)
    sync_api.expect(page.locator("#status")).to_have_text("completed")
    assert _points(page, "chart-loss", "train") == epochs == _points(page, "chart-loss", "validation")
    assert _points(page, "chart-accuracy", "validation") == epochs
    seen = [n for n in dict.fromkeys(page.evaluate("window.seen")) if n]
    assert seen == list(range(1, epochs + 1)), seen  # a point per epoch as it finished
    assert page.evaluate("window.loadedOnce") is True  # ... with no reload
    # Every stage of the plan in the stage table, with its figures.
    sync_api.expect(page.locator("#stage-table tbody tr")).to_have_count(2)
    assert "MB" in page.locator("#stage-table tbody tr").first.inner_text()
    sync_api.expect(page.locator("#checkpoints li")).not_to_have_count(0)
    assert page.locator("#download").is_visible()
    if shots:
        page.screenshot(path=str(shots / "job-done.png"), full_page=True)
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(path=str(shots / "job-phone.png"))
        page.set_viewport_size({"width": 1280, "height": 900})
    page.click("header nav a[href='#/']")  # back to the cluster: the job is listed, done
    sync_api.expect(page.locator(f"#jobs tr[data-job='{job_id}']")).to_contain_text("completed")
    if shots:
        page.screenshot(path=str(shots / "cluster.png"), full_page=True)

    here = urlsplit(cluster.base).netloc
    elsewhere = [u for u in page.requests if urlsplit(u).scheme in ("http", "https") and urlsplit(u).netloc != here]
    assert not elsewhere and len(page.requests) > 5, page.requests  # every asset and call from the API


def test_a_recovered_job_shows_its_recovery_and_a_step_curve_that_goes_forward(cluster, page):
    # 300 steps an epoch: seconds, so the last stage reports progress (every 0.5 s) all through each.
    job_id = cluster.ok("POST", "/api/jobs", {**JOB, "dataset_config": {"name": "MNIST", "batch_size": 10}})["job_id"]
    devices = []
    for name in ("mac-a", "mac-b", "spare"):
        devices.append(cluster.ok("POST", "/api/devices/register", {"job_id": job_id, "name": name})["device_id"])
        if name != "spare":  # its worker starts once the job has lost one
            cluster.start_worker(devices[-1])
    cluster.wait_live(devices[:2])
    cluster.ok("POST", f"/api/network/initialize/{job_id}", {"devices": devices[:2]})
    page.goto(f"{cluster.base}/#/jobs/{job_id}")  # followed live, as a user watching it would
    sync_api.expect(page.locator("#status")).to_have_text("ready")
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 3, "wire": "fp32"})
    until_epoch(cluster.client(), job_id, 2)  # the checkpoint of epoch 1 is saved; epoch 2 is under way
    cluster.kill(f"worker-{devices[1]}")
    sync_api.expect(page.locator("#status")).to_have_text("recovering")
    cluster.start_worker(devices[2])
    sync_api.expect(page.locator("#status")).to_have_text("completed")
    (rec,) = cluster.ok("GET", f"/api/jobs/{job_id}")["recoveries"]
    assert rec["at_step"] >= rec["resumed_from_step"] > 0  # lost after the checkpoint it resumed from
    said = re.escape(f"device {devices[1]} (stage {rec['stage_lost']}) lost at step {rec['at_step']} ({rec['cause']}); "
                     f"resumed from step {rec['resumed_from_step']} after ") + r"[\d.]+" + re.escape(
                     f" s ({rec['steps_redone']} steps redone)")  # fmt: skip
    sync_api.expect(page.locator("#recoveries li")).to_have_text(re.compile(said))
    # The steps after the checkpoint ran twice: the recovery's losses replace the lost run's, so the
    # curve never goes back (its points' x, in the order drawn, only grow).
    curve, drawn = "#chart-steps path[data-series='training loss']", None
    while drawn != (drawn := page.locator(curve).get_attribute("d")):  # until the feed has no more to draw
        time.sleep(1)
    xs = [float(x) for x in re.findall(r"[ML](-?[\d.]+),", drawn)]
    assert len(xs) >= 3 and all(a < b for a, b in zip(xs, xs[1:], strict=False)), drawn


def test_stop_from_the_page_and_a_failed_jobs_error(cluster, page):
    cluster.join("mac-a", "mac-b")
    job_id = cluster.ok("POST", "/api/jobs", JOB)["job_id"]
    cluster.ok("POST", f"/api/network/initialize/{job_id}")
    cluster.ok("POST", f"/api/network/train/{job_id}", {"epochs": 500})
    page.goto(f"{cluster.base}/#/jobs/{job_id}")
    sync_api.expect(page.locator("#status")).to_have_text("training")
    page.wait_for_function("document.querySelectorAll('#chart-steps path').length >= 1")  # steps are arriving
    page.click("#stop")
    sync_api.expect(page.locator("#status")).to_have_text("stopped")
    sync_api.expect(page.locator("#job-error")).to_have_text("stopped by the user")
    assert cluster.ok("GET", f"/api/jobs/{job_id}")["status"] == "stopped"

    # A job whose dataset is not on the workers fails at initialize; the page says why.
    broken = cluster.ok("POST", "/api/jobs", {**JOB, "dataset_config": {"name": "FashionMNIST"}})["job_id"]
    page.goto(f"{cluster.base}/#/jobs/{broken}")
    sync_api.expect(page.locator("#status")).to_have_text("created")
    page.click("#initialize")
    sync_api.expect(page.locator("#status")).to_have_text("failed")
    sync_api.expect(page.locator("#job-error")).to_contain_text("FashionMNIST")
    sync_api.expect(page.locator("#notice")).to_contain_text("409")


def test_a_lan_cluster_asks_for_the_token_once(redis_url, tmp_path, chromium):
    c = Cluster(redis_url, tmp_path, tmp_path, token="s3cret-token")
    c.start_api(flower_url="http://127.0.0.1:5555")  # as `arceus up --flower` tells the API
    context = chromium.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(c.base + "/")
        page.fill("#token", "wrong")
        page.click("#login-form button")
        sync_api.expect(page.locator("#notice")).to_contain_text("wrong token")
        page.fill("#token", "s3cret-token")
        page.click("#login-form button")
        sync_api.expect(page.locator("h1")).to_have_text("Cluster")
        sync_api.expect(page.locator("#flower")).to_have_attribute("href", "http://127.0.0.1:5555")
        page.reload()  # the cookie holds across visits
        sync_api.expect(page.locator("h1")).to_have_text("Cluster")
        page.click("#signout")
        sync_api.expect(page.locator("#token")).to_be_visible()
    finally:
        context.close()
        c.stop_all()
