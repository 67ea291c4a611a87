"""Write MNIST-format (IDX) files: a learnable synthetic MNIST for tests and benchmarks.

The real torchvision loader reads these exactly as it reads MNIST, so tests and
benchmarks exercise the same code path as a user with the real files.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

__all__ = ["learnable_images", "write_idx", "write_synthetic_mnist"]


def write_idx(path: Path, array: torch.Tensor) -> None:
    """Write a uint8 tensor as an uncompressed IDX file (big-endian header, as MNIST ships)."""
    if array.dtype != torch.uint8:
        raise ValueError(f"IDX writer takes uint8 tensors, got {array.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    path.write_bytes(header + array.contiguous().numpy().tobytes())


def learnable_images(n: int, seed: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten smooth 28x28 class prototypes plus gaussian noise, as uint8 images and labels."""
    protos = torch.nn.functional.interpolate(
        torch.rand(10, 1, 7, 7, generator=torch.Generator().manual_seed(1234)), size=(28, 28), mode="bilinear"
    ).squeeze(1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    images = protos[labels] + noise * torch.randn(n, 28, 28, generator=g)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels.to(torch.uint8)


def write_synthetic_mnist(
    root: Path, name: str = "MNIST", n_train: int = 6000, n_val: int = 1000, noise: float = 0.7
) -> Path:
    """``<root>/<name>/raw/`` with the four IDX files torchvision's MNIST reader expects."""
    raw = Path(root) / name / "raw"
    tx, ty = learnable_images(n_train, seed=1, noise=noise)
    vx, vy = learnable_images(n_val, seed=2, noise=noise)
    write_idx(raw / "train-images-idx3-ubyte", tx)
    write_idx(raw / "train-labels-idx1-ubyte", ty)
    write_idx(raw / "t10k-images-idx3-ubyte", vx)
    write_idx(raw / "t10k-labels-idx1-ubyte", vy)
    return raw
