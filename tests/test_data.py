import os

import pytest
import torch
from conftest import write_mnist

from arceus.config import DatasetConfig
from arceus.engine.data import batch_indices, load_dataset
from arceus.errors import DatasetUnavailable


@pytest.mark.parametrize("name", ["MNIST", "FashionMNIST"])
def test_torchvision_loads_idx_files_and_normalizes(tmp_path, name):
    write_mnist(tmp_path, name=name, n_train=200, n_val=50)
    raw = (tmp_path / name / "raw" / "train-images-idx3-ubyte").read_bytes()
    cfg = DatasetConfig(name=name, mean=(0.5,), std=(0.25,))
    ds = load_dataset(cfg, tmp_path)
    assert ds.train_x.shape == (200, 1, 28, 28) and ds.val_x.shape == (50, 1, 28, 28)  # (N, channels, H, W)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    first_pixels = torch.tensor(list(raw[16 : 16 + 784]), dtype=torch.float32)
    torch.testing.assert_close(ds.train_x[0].flatten(), (first_pixels / 255 - 0.5) / 0.25)
    assert set(ds.train_y.tolist()) <= set(range(10))


def test_missing_files_say_where_to_put_them(tmp_path):
    with pytest.raises(DatasetUnavailable) as e:
        load_dataset(DatasetConfig(name="MNIST"), tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg and "digits" in msg


def test_digits_stand_in_is_mnist_shaped():
    ds = load_dataset(DatasetConfig(name="digits", mean=(0.0,), std=(1.0,)), "/nonexistent")
    assert ds.train_x.shape == (1497, 1, 28, 28) and ds.val_x.shape == (300, 1, 28, 28)
    assert 0.0 <= ds.train_x.min() and ds.train_x.max() <= 1.0
    img = ds.train_x[0].view(28, 28)
    assert img[:4].abs().sum() == 0 and img[:, -4:].abs().sum() == 0  # 4-pixel frame, like MNIST
    assert sorted(set(ds.val_y.tolist())) == list(range(10))


def test_batch_order_is_seeded_and_covers_the_epoch():
    a = batch_indices(1000, 256, seed=3, epoch=1)
    assert [len(b) for b in a] == [256, 256, 256, 232]
    assert sorted(torch.cat(a).tolist()) == list(range(1000))
    assert all(torch.equal(x, y) for x, y in zip(a, batch_indices(1000, 256, seed=3, epoch=1), strict=True))
    assert not torch.equal(a[0], batch_indices(1000, 256, seed=3, epoch=2)[0])


def test_text_is_cut_into_blocks_whose_targets_are_the_next_bytes(tmp_path):
    text = bytes(range(256)) * 40  # 10,240 bytes
    (tmp_path / "corpus.txt").write_bytes(text)
    ds = load_dataset(DatasetConfig(name="text", path="corpus.txt", block_size=15, val_fraction=0.1), tmp_path)
    # The first 9,216 bytes make 576 training blocks of 16; the last 1,024 make 64 validation blocks.
    assert ds.train_x.shape == (576, 15) and ds.val_x.shape == (64, 15) and ds.sample_shape == (15,)
    assert ds.train_x.dtype == torch.int64 and not ds.train_x.is_floating_point()
    flat = torch.tensor(list(text[: 576 * 16])).view(576, 16)
    assert torch.equal(ds.train_x, flat[:, :-1]) and torch.equal(ds.train_y, flat[:, 1:])
    assert torch.equal(ds.val_x[0], torch.tensor(list(text[9216 : 9216 + 15])))


def test_text_without_a_path_is_pythons_own_source_and_bad_paths_say_so(tmp_path):
    ds = load_dataset(DatasetConfig(name="text", block_size=64), tmp_path)
    assert len(ds.train_x) > 20_000 and int(ds.train_x.max()) < 256
    with pytest.raises(DatasetUnavailable, match=r"missing.txt cannot be read .* relative to ARCEUS_DATA_DIR"):
        load_dataset(DatasetConfig(name="text", path="missing.txt"), tmp_path)
    (tmp_path / "short.txt").write_bytes(b"hello world")
    with pytest.raises(DatasetUnavailable, match="gives 0 training and 0 validation blocks of 129 bytes"):
        load_dataset(DatasetConfig(name="text", path="short.txt"), tmp_path)


def _write_cifar(root, per_batch=20, n_test=30):
    """A small set in CIFAR-10's python format: torchvision's own pickled batches (written here,
    by the test; Arceus itself never unpickles anything)."""
    import pickle

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for name, n in [(f"data_batch_{i}", per_batch) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {"data": torch.randint(0, 256, (n, 3072), dtype=torch.uint8, generator=g).numpy(),
                 "labels": torch.randint(0, 10, (n,), generator=g).tolist()}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"class{i}" for i in range(10)]}))
    return folder


def test_cifar10_is_read_by_torchvision_only_when_its_checksums_match(tmp_path, monkeypatch):
    import pickle

    import torchvision.datasets.cifar as cifar

    folder = _write_cifar(tmp_path)
    cfg = DatasetConfig.parse({"name": "CIFAR10"})
    assert cfg.mean == (0.4914, 0.4822, 0.4465) and cfg.sample.shape == (3, 32, 32)
    with pytest.raises(DatasetUnavailable, match="torchvision checks their MD5"):
        load_dataset(cfg, tmp_path)  # not the official files: torchvision refuses to unpickle them
    # Stand in for the official files' checksums; the rest is torchvision's real reader.
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ds = load_dataset(cfg, tmp_path)
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.val_x.shape == (30, 3, 32, 32)
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    raw = torch.tensor(first["data"][0], dtype=torch.float32).view(3, 32, 32) / 255
    mean, std = torch.tensor(cfg.mean).view(3, 1, 1), torch.tensor(cfg.std).view(3, 1, 1)
    torch.testing.assert_close(ds.train_x[0], (raw - mean) / std)
    assert ds.train_y[:20].tolist() == first["labels"]
