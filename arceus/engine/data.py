"""Datasets, decoded and normalized once into tensors (no per-sample PIL transforms).

MNIST and FashionMNIST come through torchvision from ``<data_dir>/<Name>/raw/``.
``digits`` is the offline stand-in: scikit-learn's 1,797 8x8 handwritten digits, read
from the CSV that ships inside its wheel, scaled to MNIST's 28x28 layout (a 20x20 digit
centred in a 28x28 frame, values in [0, 1]) so the seed model 784-128-64-10 runs unchanged.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
import socket
import sysconfig
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import torch

from ..config import DatasetConfig
from ..errors import DatasetUnavailable
from ..plan.layers import SampleShape

__all__ = ["Dataset", "batch_indices", "load_dataset", "load_digits", "normalize", "steps_per_epoch", "text_bytes"]

log = logging.getLogger(__name__)

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@dataclass(frozen=True)
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, *sample_shape) float32, normalized
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor
    val_y: torch.Tensor

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def sample(self) -> SampleShape:
        """One sample's shape, and whether it holds token ids."""
        return SampleShape(self.sample_shape, ids=not self.train_x.is_floating_point())


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 or float in [0, 1], (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W), (x - mean[c]) / std[c]."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    if x.dim() == 3:
        x = x.unsqueeze(1)  # (N, 1, H, W)
    if len(mean) != x.shape[1]:
        raise DatasetUnavailable(f"normalize has {len(mean)} channels but the images have {x.shape[1]}")
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()


def _torchvision(name: str, root: Path, download: bool) -> tuple[torch.Tensor, ...]:
    from torchvision import datasets  # noqa: PLC0415 - torchvision is slow to import; only when needed

    cls = getattr(datasets, name)
    offline = ""
    if download and not _files_present(cls, root):
        host = _download_host(cls)
        if not _reachable(host):  # fail now with the same advice, not after torchvision's retries
            download, offline = False, f"; no download: {host} cannot be reached from here"
    try:
        train = cls(str(root), train=True, download=download)
        val = cls(str(root), train=False, download=download)
    except (RuntimeError, OSError) as e:
        if name == "CIFAR10":
            # torchvision unpickles these files only once their MD5 matches the official ones.
            raise DatasetUnavailable(
                f"CIFAR10 is not available under {root / 'cifar-10-batches-py'} ({e}{offline}). Put the official "
                f"python version there (data_batch_1 to data_batch_5, test_batch, batches.meta: torchvision checks "
                f"their MD5), set ARCEUS_DATA_DIR to a folder that has cifar-10-batches-py/, or run where "
                f"there is internet (Arceus downloads it unless ARCEUS_DOWNLOAD=0)."
            ) from e
        raw = root / name / "raw"
        raise DatasetUnavailable(
            f"{name} is not available under {raw} ({e}{offline}). Put the four uncompressed IDX files "
            f"({', '.join(MNIST_FILES)}) in {raw}, set ARCEUS_DATA_DIR to a folder that has "
            f"{name}/raw/, run where there is internet (Arceus downloads it unless ARCEUS_DOWNLOAD=0), "
            f"or use the offline stand-in dataset 'digits'."
        ) from e
    if name == "CIFAR10":  # numpy (N, H, W, C) uint8 and lists of labels

        def chw(a: object) -> torch.Tensor:
            return torch.from_numpy(a).permute(0, 3, 1, 2)

        return chw(train.data), torch.tensor(train.targets), chw(val.data), torch.tensor(val.targets)
    return train.data, train.targets, val.data, val.targets


def _files_present(cls: type, root: Path) -> bool:
    try:
        cls(str(root), train=True, download=False)
    except (RuntimeError, OSError):
        return False
    return True


def _download_host(cls: type) -> str:
    url = cls.mirrors[0] if getattr(cls, "mirrors", None) else getattr(cls, "url", "")
    return urlsplit(url).hostname or ""


def _reachable(host: str, timeout_s: float = 5.0) -> bool:
    """Whether a TCP connection to ``host``:443 opens within ``timeout_s`` (the name lookup
    included, which has no timeout of its own: it runs in a thread we stop waiting for)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout_s).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout_s)
    return bool(result and result[0])


def load_digits() -> tuple[torch.Tensor, ...]:
    """scikit-learn's digits as (train_x, train_y, val_x, val_y), images float in [0, 1] (N, 28, 28)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailable("the stand-in dataset 'digits' needs scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        rows = [[float(v) for v in line.split(",")] for line in f if line.strip()]
    table = torch.tensor(rows)  # (1797, 65): 64 pixels in 0..16, then the label
    images = (table[:, :64] / 16.0).view(-1, 1, 8, 8)
    images = torch.nn.functional.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    images = torch.nn.functional.pad(images, (4, 4, 4, 4)).clamp_(0, 1).view(-1, 28, 28)
    labels = table[:, 64].long()
    # A fixed split (not a function of any run's seed): 300 validation samples.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1797))
    val, train = perm[:300], perm[300:]
    return images[train], labels[train], images[val], labels[val]


# The offline text stand-in: this much of Python's own standard library sources.
STANDIN_BYTES = 2 << 20


def text_bytes(cfg: DatasetConfig, data_dir: Path) -> bytes:
    if cfg.path is not None:
        path = Path(data_dir) / cfg.path
        try:
            return path.read_bytes()
        except OSError as e:
            raise DatasetUnavailable(
                f"the text file {path} cannot be read ({e.strerror or e}): dataset_config.path is relative to "
                f"ARCEUS_DATA_DIR ({data_dir}); leave it out to train on the offline stand-in (Python's own sources)"
            ) from None
    # Every Python install has its standard library's sources: read in a fixed order.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    chunks, size = [], 0
    for f in sorted(stdlib.glob("*.py")):
        chunks.append(f.read_bytes())
        size += len(chunks[-1])
        if size >= STANDIN_BYTES:
            break
    return b"".join(chunks)[:STANDIN_BYTES]


def load_text(cfg: DatasetConfig, data_dir: Path) -> Dataset:
    """Byte-level language modelling: samples are block_size byte ids, targets the bytes that
    follow each. The file's first part is cut into non-overlapping blocks of block_size + 1
    bytes (shuffled every epoch by the batch order), its last ``val_fraction`` likewise."""
    raw = text_bytes(cfg, data_dir)
    data = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if raw else torch.empty(0, dtype=torch.uint8)
    cut, span = int(len(data) * (1 - cfg.val_fraction)), cfg.block_size + 1

    def blocks(part: torch.Tensor) -> torch.Tensor:  # (n, block_size + 1)
        n = len(part) // span
        return part[: n * span].view(n, span).long()

    train, val = blocks(data[:cut]), blocks(data[cut:])
    if not len(train) or not len(val):
        raise DatasetUnavailable(
            f"text of {len(data)} bytes gives {len(train)} training and {len(val)} validation blocks of "
            f"{span} bytes: use a longer text or a smaller block_size"
        )
    return Dataset("text", train[:, :-1], train[:, 1:], val[:, :-1], val[:, 1:])


def load_dataset(cfg: DatasetConfig, data_dir: Path, download: bool = False) -> Dataset:
    if cfg.name == "text":
        ds = load_text(cfg, data_dir)
        log.info("loaded text: %d training and %d validation blocks", len(ds.train_y), len(ds.val_y))
        return ds
    if cfg.name == "digits":
        tx, ty, vx, vy = load_digits()
    else:
        tx, ty, vx, vy = _torchvision(cfg.name, Path(data_dir), download)
    log.info("loaded %s: %d train, %d validation samples", cfg.name, len(ty), len(vy))
    return Dataset(cfg.name, normalize(tx, cfg.mean, cfg.std), ty.long(), normalize(vx, cfg.mean, cfg.std), vy.long())


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Batches in an epoch of ``n`` samples (``batch_indices``'s count)."""
    return -(-n // batch_size)


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> list[torch.Tensor]:
    """The training order of one epoch: a seeded permutation cut into batches (the last may be short)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    return list(perm.split(batch_size))
