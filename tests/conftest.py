"""Fixtures: one real redis-server per test session (flushed per test), IDX dataset files."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from arceus.idx import write_synthetic_mnist
from arceus.redis_server import EmbeddedRedis
from arceus.settings import Settings


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
