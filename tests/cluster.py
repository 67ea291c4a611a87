"""The control plane as real processes for tests: arceus's own LocalCluster and ApiClient,
on the test session's Redis, with test-sized settings."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from conftest import write_mnist

from arceus.control.client import ApiClient
from arceus.launch.control_plane import LocalCluster
from arceus.launch.procs import free_port
from arceus.settings import Settings

__all__ = ["ROOT", "SMALL", "Cluster", "free_port", "until_epoch"]

ROOT = Path(__file__).resolve().parent.parent
# A job that trains in a second or two on the tests' MNIST files.
SMALL = {"model_config": {"layer_sizes": [784, 32, 16, 10]}, "dataset_config": {"batch_size": 200}}


def until_epoch(client: ApiClient, job_id: str, epoch: int) -> None:
    """Return as soon as the job's live feed reports a step of epoch ``epoch`` or later (a poll
    of the job can miss an epoch that lasts under a second); fail if the job ends first."""
    for ev in client.events(f"/api/jobs/{job_id}/events"):
        if ev["type"] in ("progress", "epoch") and ev["epoch"] >= epoch:
            return
        if ev["type"] == "end":
            raise AssertionError(f"job {job_id} ended ({ev['status']}) before epoch {epoch} was reported")


class Cluster(LocalCluster):
    def __init__(self, redis_url: str, data_dir: Path, logs: Path, token: str | None = None) -> None:
        # ARCEUS_HOME from the environment: the test session's throwaway one (conftest).
        settings = Settings.from_env(redis_url=redis_url, data_dir=data_dir, threads=1, init_timeout_s=30, token=token)
        super().__init__(settings, port=free_port(), logs=logs)
        self.base = self.api_url
        self.api = ApiClient(self.base, timeout_s=60, token=token)

    @classmethod
    def serving(
        cls, redis_url: str, tmp_path: Path, mnist: tuple[int, int] | None = (6000, 1000), **settings: object
    ) -> Iterator[Cluster]:
        """A test's cluster with its API up (``settings`` override the API's), stopped after; data
        under ``tmp_path/data``: MNIST-format files of ``mnist`` (training, validation) samples."""
        if mnist is not None:
            write_mnist(tmp_path / "data", n_train=mnist[0], n_val=mnist[1])
        c = cls(redis_url, tmp_path / "data", tmp_path)
        try:
            c.start_api(**settings)
            yield c
        finally:
            c.stop_all()

    def join(self, *names: str) -> list[str]:
        """Start `arceus worker --join` for each name; their device ids once all are live."""
        for name in names:
            self.start_device(name, threads=1)
        self.wait_for_workers(len(names))
        by_name = {d["name"]: d["device_id"] for d in self.ok("GET", "/api/devices")["devices"] if d["alive"]}
        return [by_name[n] for n in names]

    @property
    def env(self) -> dict[str, str]:
        """The environment a process of this cluster gets (for processes a test starts itself)."""
        return self.child_env()

    def start_flower(self, port: int) -> str:
        return super().start_flower(port, FLOWER_UNAUTHENTICATED_API="true")  # its HTTP API without a login

    def stop_all(self) -> None:
        self.stop()

    def call(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
        return self.api.request(method, path, body, raw)

    def ok(self, method: str, path: str, body: object = None) -> dict:
        """The JSON answer of a call that must succeed (the status and answer in the failure)."""
        status, reply = self.call(method, path, body)
        assert status < 300, (method, path, status, reply)
        return reply

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

    def wait_for(self, job_id: str, predicate, timeout: float, what: str) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            _, job = self.call("GET", f"/api/jobs/{job_id}")
            if predicate(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; job is {job}")
            time.sleep(0.25)
