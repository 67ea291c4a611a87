"""``GET /metrics``: the cluster in Prometheus's text format (prometheus-client), read from Redis
at each scrape (a few round trips: the job records hold their latest figures), and the API's own
request counts and latencies."""

from __future__ import annotations

import json
import time

from flask import Flask, Response, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from arceus import keys
from arceus.control.jobs import ACTIVE

__all__ = ["install_metrics"]

# Beyond the active jobs, this many of the newest are reported (their last figures stay useful
# on a dashboard for a while); older jobs are left out so a scrape stays a few round trips.
RECENT_JOBS = 20
# Methods a label may name; any other is counted as "other" (labels stay few, whatever is sent).
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

_JOB_FIGURES = {  # epoch event field -> (metric, help)
    "samples_per_s": ("arceus_job_samples_per_second", "training samples per second in the job's latest epoch"),
    "train_loss": ("arceus_job_train_loss", "mean training loss of the latest epoch"),
    "train_accuracy": ("arceus_job_train_accuracy", "training accuracy of the latest epoch"),
    "val_loss": ("arceus_job_val_loss", "validation loss after the latest epoch"),
    "val_accuracy": ("arceus_job_val_accuracy", "validation accuracy after the latest epoch"),
    "epoch": ("arceus_job_epoch", "the latest finished epoch"),
}
_STAGE_FIGURES = {  # stage event field -> (metric, help)
    "utilization": ("arceus_stage_utilization", "share of the latest epoch the stage computed or coded (0-1)"),
    "compute_s": ("arceus_stage_compute_seconds", "seconds of forward and backward in the latest epoch"),
    "wait_s": ("arceus_stage_wait_seconds", "seconds waiting for a neighbour in the latest epoch"),
    "bytes_wire": ("arceus_stage_sent_bytes", "bytes the stage sent in the latest epoch"),
    "peak_rss_mb": ("arceus_stage_peak_rss_mebibytes", "peak resident memory of the stage's worker"),
}


class ClusterCollector:
    """Jobs by status, devices, and per job and stage the figures of their latest epoch."""

    def __init__(self, control) -> None:
        self.control = control

    def collect(self):
        r, store = self.control.r, self.control.store
        ids = [i.decode() for i in r.zrange(keys.JOBS, 0, -1)]
        pipe = r.pipeline(transaction=False)
        for job_id in ids:
            # Written by the supervisor as the job's runs report (control.supervisor).
            pipe.hmget(keys.job(job_id), "status", "latest_epoch", "latest_stages")
        rows = dict(zip(ids, pipe.execute(), strict=True))
        by_status = GaugeMetricFamily("arceus_jobs", "jobs by status", labels=["status"])
        counts: dict[str, int] = {}
        for status, _, _ in rows.values():
            if status:
                counts[status.decode()] = counts.get(status.decode(), 0) + 1
        for status in ("created", "initializing", "ready", "training", "recovering", "completed", "failed", "stopped"):
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status

        devices = store.devices.all()
        yield GaugeMetricFamily("arceus_devices", "devices in the pool", value=len(devices))
        yield GaugeMetricFamily("arceus_devices_alive", "devices whose worker holds its lease",
                                value=sum(1 for d in devices if d.get("alive")))  # fmt: skip

        shown = [j for j in ids if rows[j][0] and rows[j][0].decode() in ACTIVE] + ids[-RECENT_JOBS:]
        job_metrics = {f: GaugeMetricFamily(m, h, labels=["job"]) for f, (m, h) in _JOB_FIGURES.items()}
        stage_metrics = {f: GaugeMetricFamily(m, h, labels=["job", "stage"]) for f, (m, h) in _STAGE_FIGURES.items()}
        for job_id in dict.fromkeys(shown):
            _, epoch, stages = rows[job_id]
            epoch, stages = json.loads(epoch) if epoch else {}, json.loads(stages) if stages else {}
            for name, family in job_metrics.items():
                if isinstance(epoch.get(name), (int, float)):
                    family.add_metric([job_id], epoch[name])
            for stage, row in sorted(stages.items(), key=lambda kv: int(kv[0])):
                for name, family in stage_metrics.items():
                    if isinstance(row.get(name), (int, float)):
                        family.add_metric([job_id, stage], row[name])
        yield from job_metrics.values()
        yield from stage_metrics.values()


def install_metrics(app: Flask, control) -> None:
    """Count and time every request; serve ``/metrics``."""
    registry = CollectorRegistry()  # the app's own: two apps in one process (tests) do not collide
    requests = Counter("arceus_api_requests", "API requests answered", ["method", "route", "status"],
                       registry=registry)  # fmt: skip
    latency = Histogram("arceus_api_request_seconds", "API request latency (until the answer's headers)",
                        ["method", "route"], registry=registry)  # fmt: skip
    registry.register(ClusterCollector(control))

    @app.before_request
    def _start_clock():
        g.arceus_started = time.perf_counter()

    @app.after_request
    def _count(response):
        route = request.url_rule.rule if request.url_rule is not None else "(no route)"
        method = request.method if request.method in _METHODS else "other"
        requests.labels(method, route, str(response.status_code)).inc()
        if "arceus_started" in g:
            latency.labels(method, route).observe(time.perf_counter() - g.arceus_started)
        return response

    @app.get("/metrics")
    def _metrics():
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
