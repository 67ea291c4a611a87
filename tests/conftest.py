"""Fixtures: one real redis-server per test session (flushed per test), IDX dataset files."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from arceus.engine.idx import write_synthetic_mnist
from arceus.launch.redis_server import EmbeddedRedis
from arceus.settings import Settings

# A runner started in the background (``cmd &`` without job control, some CI agents) ignores
# SIGINT, and the processes it starts inherit that: the Ctrl-C tests would then send a
# signal nobody hears. With a handler here, processes started from the tests get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    # Short timeouts so a broken pipeline fails a test in seconds, not minutes.
    return Settings(data_dir=tmp_path / "data", recv_timeout_s=30.0)


def write_mnist(root: Path, name: str = "MNIST", n_train: int = 6000, n_val: int = 1000) -> None:
    write_synthetic_mnist(root, name, n_train, n_val)
