"""Stage 0's message source: a plain generator, checked without Redis."""

import torch

from arceus.config import DatasetConfig, TrainConfig
from arceus.engine.data import Dataset, batch_indices
from arceus.engine.source import dataset_messages


def _data(n_train=10, n_val=5, features=3) -> Dataset:
    x = torch.arange(n_train * features, dtype=torch.float32).view(n_train, features)
    vx = -torch.arange(n_val * features, dtype=torch.float32).view(n_val, features)
    return Dataset("t", x, torch.arange(n_train) % 10, vx, torch.arange(n_val) % 10)


def test_messages_cover_every_epoch_in_the_seeded_order_with_markers():
    data, cfg = _data(), DatasetConfig(batch_size=4, val_batch_size=3)
    train = TrainConfig(epochs=2, micro_batches=2, seed=3)
    msgs = list(dataset_messages(data, cfg, train, torch.device("cpu")))
    kinds = [m.header["kind"] for m in msgs]
    # Per epoch: 3 batches (4, 4, 2 samples) of 2 micro-batches, the marker, 2 eval batches, the
    # marker, and where a checkpoint is saved (by default after every epoch's evaluation).
    epoch = ["train"] * 6 + ["epoch_end", "eval", "eval", "eval_end", "checkpoint"]
    assert kinds == epoch + epoch + ["end"]
    marks = [m.header for m in msgs if m.header["kind"] == "checkpoint"]
    assert [(h["step"], h["epoch"], h["batch"], h["end_epoch"]) for h in marks] == [(3, 1, 0, 2), (6, 2, 0, 2)]
    for e in range(2):
        train_msgs = [m for m in msgs if m.header["kind"] == "train" and m.header["epoch"] == e]
        order = torch.cat(batch_indices(10, 4, seed=3, epoch=e))
        torch.testing.assert_close(torch.cat([m.x for m in train_msgs]), data.train_x[order])
        ys = torch.cat([m.y for m in train_msgs])
        assert ys.dtype == torch.uint8  # class ids as they travel, cast in the prefetch thread
        torch.testing.assert_close(ys.long(), data.train_y[order])
        heads = [m.header for m in train_msgs]
        assert [(h["i"], h["mb"], h["n_mb"], h["bs"], h["steps"]) for h in heads] == [
            (0, 0, 2, 4, 3), (0, 1, 2, 4, 3), (1, 0, 2, 4, 3), (1, 1, 2, 4, 3), (2, 0, 2, 2, 3), (2, 1, 2, 2, 3)
        ]  # fmt: skip
        assert [h["step"] for h in heads] == [3 * e + s for s in (0, 0, 1, 1, 2, 2)]  # counted across epochs
    evals = [m for m in msgs if m.header["kind"] == "eval" and m.header["epoch"] == 1]
    torch.testing.assert_close(torch.cat([m.x for m in evals]), data.val_x)
    ends = [m.header for m in msgs if m.header["kind"] in ("epoch_end", "eval_end")]
    assert all(h["train_seconds"] >= 0 for h in ends)


def test_a_batch_smaller_than_the_micro_batch_count_is_cut_into_one_row_each():
    data, cfg = _data(n_train=5), DatasetConfig(batch_size=4, val_batch_size=5)
    msgs = list(dataset_messages(data, cfg, TrainConfig(epochs=1, micro_batches=3), torch.device("cpu")))
    heads = [m.header for m in msgs if m.header["kind"] == "train"]
    assert [(h["i"], h["n_mb"], len(m.x)) for h, m in zip(heads, msgs, strict=False)] == [
        (0, 3, 2), (0, 3, 1), (0, 3, 1), (1, 1, 1)
    ]  # fmt: skip


def test_a_run_resumed_inside_an_epoch_continues_the_same_order_with_checkpoints_every_n_steps():
    data, cfg = _data(), DatasetConfig(batch_size=4, val_batch_size=5)
    straight = list(dataset_messages(data, cfg, TrainConfig(epochs=3, seed=3), torch.device("cpu")))
    # From step 4 (epoch 1, batch 1), 2 epochs: the rest of epoch 1, then epoch 2; a checkpoint every 2 steps.
    train = TrainConfig(epochs=2, seed=3, checkpoint_every=2)
    resumed = list(dataset_messages(data, cfg, train, torch.device("cpu"), start_step=4))
    steps = [(m.header["step"], m.header["i"]) for m in resumed if m.header["kind"] == "train"]
    assert steps == [(4, 1), (5, 2), (6, 0), (7, 1), (8, 2)]
    later = [m for m in straight if m.header["kind"] == "train" and m.header["step"] >= 4]
    torch.testing.assert_close(torch.cat([m.x for m in resumed if m.header["kind"] == "train"]),
                               torch.cat([m.x for m in later]))  # fmt: skip
    marks = [
        (m.header["step"], m.header["epoch"], m.header["batch"]) for m in resumed if m.header["kind"] == "checkpoint"
    ]
    assert marks == [(6, 2, 0), (8, 2, 2), (9, 3, 0)]  # every 2nd step, and the run's last one after its evaluation
    assert [m.header["end_epoch"] for m in resumed if m.header["kind"] == "checkpoint"] == [3, 3, 3]
