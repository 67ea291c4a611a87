"""Real processes for control-plane tests: the API server, Celery workers, Flower."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from arceus.procs import free_port, stop_processes

__all__ = ["Cluster", "free_port"]

ROOT = Path(__file__).resolve().parent.parent


class Cluster:
    def __init__(self, redis_url: str, data_dir: Path, logs: Path) -> None:
        self.env = {
            **os.environ,
            "ARCEUS_REDIS_URL": redis_url,
            "ARCEUS_DATA_DIR": str(data_dir),
            "ARCEUS_THREADS": "1",
            "ARCEUS_INIT_TIMEOUT": "30",
            "FLOWER_UNAUTHENTICATED_API": "true",
        }
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_port = free_port()
        self.base = f"http://127.0.0.1:{self.api_port}"

    def _start(self, name: str, args: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, cwd=ROOT, env=env or self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_api(self, **env: str) -> None:
        self._start("api", [sys.executable, "-m", "api.server", "--port", str(self.api_port)], {**self.env, **env})
        self.wait_http("/api/openapi.json")

    def start_worker(self, device_id: int) -> subprocess.Popen:
        args = [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", f"device-{device_id}",
                "-n", f"device-{device_id}@%h", "--loglevel", "INFO"]  # fmt: skip
        return self._start(f"worker-{device_id}", args)

    def start_flower(self, port: int) -> None:
        args = [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"]
        self._start("flower", args)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        stop_processes(self.procs.values())
        self.procs.clear()

    def wait_http(self, path: str, timeout: float = 30, base: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen((base or self.base) + path, timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{path} did not answer within {timeout}s") from None
                time.sleep(0.1)

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                return e.code, json.loads(payload)
            except ValueError:
                return e.code, {"raw": payload.decode(errors="replace")}

    def wait_for(self, job_id: str, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            _, job = self.call("GET", f"/api/jobs/{job_id}")
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; job is {job}")
            time.sleep(0.25)
