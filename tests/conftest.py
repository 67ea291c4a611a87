"""Fixtures: one real redis-server per test session (flushed per test), IDX dataset files."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import redis
import torch

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


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an (uncompressed) IDX file, the format MNIST ships in."""
    assert array.dtype == torch.uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def learnable_images(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten smooth 28x28 class prototypes plus heavy noise: learnable, but not trivially to 100%."""
    protos = torch.nn.functional.interpolate(
        torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(1234)), size=(28, 28), mode="bilinear"
    ).squeeze(1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = protos[labels] + noise * torch.randn(n, 28, 28, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.to(torch.uint8)


def write_mnist(root: Path, name: str = "MNIST", n_train: int = 6000, n_val: int = 1000, noise: float = 0.7) -> None:
    raw = root / name / "raw"
    tx, ty = learnable_images(n_train, seed=1, noise=noise)
    vx, vy = learnable_images(n_val, seed=2, noise=noise)
    write_idx(raw / "train-images-idx3-ubyte", tx)
    write_idx(raw / "train-labels-idx1-ubyte", ty)
    write_idx(raw / "t10k-images-idx3-ubyte", vx)
    write_idx(raw / "t10k-labels-idx1-ubyte", vy)
