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
