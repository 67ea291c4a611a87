"""Checkpoints: parts on disk, atomic and pickle-free; export; resume on another number of stages."""

import json
import signal
import struct

import pytest
import torch
from cluster import Cluster
from safetensors import safe_open
from safetensors.torch import load as load_safetensors
from torch.testing import assert_close

from arceus import load_model
from arceus.checkpoints import CheckpointStore
from arceus.cli import main
from arceus.config import JobConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.model import build_shard
from arceus.engine.optim import make_optimizer
from arceus.engine.reference import evaluate
from arceus.engine.state import encode_part, load_optimizer_state, load_part
from arceus.errors import ConfigError, NotFound
from arceus.launch.stages import train_local
from arceus.tensorfile import TensorFile, TensorFileError, write_atomic

# Three linear layers (so three stages), dropout (its masks follow the step) and AdamW (its
# step count and moments are optimizer state): a resumed run must restore all of it.
JOB = JobConfig.parse(
    {
        "model_config": {"layers": [
            {"type": "flatten"}, {"type": "linear", "out_features": 48}, {"type": "relu"},
            {"type": "dropout", "p": 0.2}, {"type": "linear", "out_features": 32}, {"type": "relu"},
            {"type": "linear", "out_features": 10},
        ]},
        "dataset_config": {"name": "digits", "batch_size": 256, "val_batch_size": 500},
    }
)  # fmt: skip
STEPS_PER_EPOCH = 6  # 1,497 digits in batches of 256


def _train(**kw) -> TrainConfig:
    return TrainConfig(**{"optimizer": "adamw", "learning_rate": 3e-3, "wire": "fp32", "seed": 3, **kw})


def _part(start: int, end: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, bytes]:
    model = build_shard(JOB, start, end, seed=0)
    opt = make_optimizer(model.parameters(), TrainConfig(optimizer="adamw"))
    model(torch.randn(4, *model.input.shape)).sum().backward()
    opt.step()
    return model, opt, encode_part(model, opt, {"step": "1"})


def test_parts_merge_and_slice_by_layer_without_torch_and_load_back(tmp_path):
    store = CheckpointStore(tmp_path)
    (m0, o0, p0), (m1, _, p1) = _part(0, 4), _part(4, 7)
    store.write_part("j1", 6, 0, p0)
    assert store.steps("j1") == []  # a part alone is no checkpoint: the manifest comes last
    store.write_part("j1", 6, 1, p1)
    manifest = {"job_id": "j1", "step": 6, "epoch": 1, "batch": 0, "created_at": 0.0, "metrics": {"val_accuracy": 0.5},
                "sample": {"shape": [1, 28, 28], "ids": False}, **JOB.to_dict(),
                "parts": [{"stage": 0, "layers": [0, 4], "file": "stage-0.safetensors"},
                          {"stage": 1, "layers": [4, 7], "file": "stage-1.safetensors"}]}  # fmt: skip
    store.commit("j1", 6, manifest)
    assert store.steps("j1") == [6]

    # The whole model: every weight, no optimizer state, and what load_model needs.
    _, combined = store.model("j1")
    path = tmp_path / "model.safetensors"
    write_atomic(path, combined.chunks())
    assert path.stat().st_size == combined.size
    weights = load_safetensors(path.read_bytes())
    assert sorted(weights) == sorted([*m0.state_dict(), *m1.state_dict()])
    for k, v in [*m0.state_dict().items(), *m1.state_dict().items()]:
        assert_close(weights[k], v)
    model = load_model(path)
    assert not model.training
    x = torch.randn(5, 1, 28, 28)
    m0.eval(), m1.eval()
    assert_close(model(x), m1(m0(x)))

    # Sliced again at another layer: weights and optimizer state follow their layer.
    again = build_shard(JOB, 1, 7, seed=9)
    state = load_part(again, store.slice("j1", 6, 1, 7))
    assert_close(again.eval()(x.flatten(1)), m1(m0(x)))
    opt = make_optimizer(again.parameters(), TrainConfig(optimizer="adamw"))
    load_optimizer_state(again, opt, state)
    assert_close(
        opt.state[again.get_parameter("1.weight")]["exp_avg"], o0.state[m0.get_parameter("1.weight")]["exp_avg"]
    )
    assert float(opt.state[again.get_parameter("6.bias")]["step"]) == 1.0
    with pytest.raises(ConfigError, match=r"does not fit layers \[1, 7\).*Missing key"):
        load_part(again, store.slice("j1", 6, 4, 7))


def _store_with(root, *steps: int) -> tuple[CheckpointStore, bytes]:
    """A store holding one-part checkpoints of job j1 at ``steps``, and that part."""
    store = CheckpointStore(root)
    _, _, part = _part(0, 7)
    for step in steps:
        store.write_part("j1", step, 0, part)
        store.commit("j1", step, {"step": step, "parts": [{"file": "stage-0.safetensors"}]})
    return store, part


def test_the_store_keeps_the_latest_and_refuses_what_is_not_its_own(tmp_path):
    store, part = _store_with(tmp_path, 6, 12, 18)
    store.write_part("j1", 3, 0, part)  # an unfinished checkpoint older than the latest
    assert store.prune("j1", keep=2) == [6]
    assert store.steps("j1") == [12, 18] and not (tmp_path / "j1" / "3").exists()
    assert store.manifest("j1")["step"] == 18
    with pytest.raises(NotFound, match="no checkpoint at step 6 .*12, 18"):
        store.manifest("j1", 6)
    with pytest.raises(NotFound, match="job j2 has no checkpoint yet"):
        store.manifest("j2")
    with pytest.raises(ConfigError, match="is not a job id"):
        store.step_dir("../elsewhere", 1)
    with pytest.raises(TensorFileError, match="is not a safetensors file"):
        store.write_part("j1", 24, 0, struct.pack("<Q", 1 << 40) + b"{}")
    assert not (tmp_path / "j1" / "24" / "stage-0.safetensors").exists()
    bad = tmp_path / "bad.safetensors"
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}}).encode()
    bad.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(TensorFileError, match="'w' lies outside the file"):
        TensorFile.read(bad)
    with pytest.raises(ConfigError, match="is not an Arceus model file"):
        load_model(tmp_path / "j1" / "18" / "stage-0.safetensors")


def test_a_run_resumed_on_fewer_stages_ends_with_the_weights_of_a_straight_run(redis_url, settings):
    straight = train_local(JOB, _train(epochs=4), 3, redis_url, settings, keep_weights=True, job_id="straight")
    assert straight.checkpoints == [6, 12, 18, 24]
    store = CheckpointStore(settings.checkpoint_dir)
    assert store.steps("straight") == [18, 24]  # keep_checkpoints=2

    first = train_local(JOB, _train(epochs=2), 3, redis_url, settings, job_id="split")
    assert first.checkpoints == [6, 12]
    second = train_local(JOB, _train(epochs=2), 2, redis_url, settings, keep_weights=True, job_id="split",
                         resume="latest")  # fmt: skip
    assert second.spec.start_step == 12 and second.checkpoints == [18, 24]
    assert [e["epoch"] for e in second.epochs] == [3, 4]
    assert second.weights.keys() == straight.weights.keys()
    for k, v in straight.weights.items():
        assert_close(second.weights[k], v, msg=k)
    assert second.epochs[-1]["val_loss"] == pytest.approx(straight.epochs[-1]["val_loss"], rel=1e-5)

    # What was exported gives, in one plain process, the accuracy the run reported.
    manifest, combined = store.model("split")
    assert manifest["step"] == 24 and manifest["metrics"]["val_accuracy"] == straight.epochs[-1]["val_accuracy"]
    path = settings.home / "model.safetensors"
    write_atomic(path, combined.chunks())
    data = load_dataset(JOB.dataset, settings.data_dir)
    val = evaluate(load_model(path), data.val_x, data.val_y, 500)
    assert val.accuracy == manifest["metrics"]["val_accuracy"]


def test_checkpoints_every_n_steps_resume_inside_an_epoch(redis_url, settings):
    straight = train_local(JOB, _train(epochs=3), 2, redis_url, settings, keep_weights=True, job_id="straight")
    first = train_local(JOB, _train(epochs=2, checkpoint_every=4, keep_checkpoints=3), 3, redis_url, settings,
                        job_id="mid")  # fmt: skip
    assert first.checkpoints == [4, 8, 12]  # and the run's last step, always
    manifest = CheckpointStore(settings.checkpoint_dir).manifest("mid", 8)
    assert (manifest["epoch"], manifest["batch"]) == (1, 2)
    # From step 8 (epoch 2's third batch), two epochs more: the rest of epoch 2, then epoch 3.
    second = train_local(JOB, _train(epochs=2), 2, redis_url, settings, keep_weights=True, job_id="mid", resume=8)
    assert second.checkpoints == [12, 18]
    for k, v in straight.weights.items():
        assert_close(second.weights[k], v, msg=k)
    with pytest.raises(ConfigError, match="holds another model_config"):
        other = JobConfig.parse({"model_config": {"layer_sizes": [784, 10]}, "dataset_config": {"name": "digits"}})
        train_local(other, _train(epochs=1), 1, redis_url, settings, job_id="mid", resume="latest")


@pytest.fixture
def cluster(redis_url, tmp_path):
    yield from Cluster.serving(redis_url, tmp_path, mnist=None)


def test_through_the_api_a_job_resumes_on_fewer_devices_and_exports_what_it_reported(cluster, redis_url, settings):
    straight = train_local(JOB, _train(epochs=4), 3, redis_url, settings, keep_weights=True, job_id="straight")

    job_id = cluster.ok("POST", "/api/jobs", JOB.to_dict())["job_id"]
    devices = []
    for i in range(3):
        devices.append(cluster.ok("POST", "/api/devices/register", {"job_id": job_id, "name": f"mac-{i}"})["device_id"])
        cluster.start_worker(devices[-1])
    cluster.wait_live(devices)
    assert cluster.ok("POST", f"/api/network/initialize/{job_id}", {"seed": 3})["step"] == 0
    train = {**_train(epochs=2).to_dict(), "betas": [0.9, 0.999]}
    assert cluster.ok("POST", f"/api/network/train/{job_id}", train)["start_step"] == 0
    job = cluster.wait_for(job_id, lambda j: j["status"] not in ("training",), 180, "the first run to end")
    assert job["status"] == "completed", job["error"]
    # Completed means its last checkpoint is on disk.
    assert job["step"] == 12 and [c["step"] for c in job["checkpoints"]] == [6, 12]
    assert job["checkpoints"][-1]["metrics"]["epoch"] == 2

    # One Mac leaves (its worker stops, its device is deleted): the plan is void; the checkpoint is
    # split again over the two left.
    cluster.kill(f"worker-{devices[2]}", signal.SIGTERM)
    cluster.ok("DELETE", f"/api/devices/{devices[2]}")
    init = cluster.ok("POST", f"/api/network/initialize/{job_id}", {"checkpoint": "latest"})
    assert init["step"] == 12 and len(init["plan"]) == 2
    assert cluster.ok("POST", f"/api/network/train/{job_id}", train)["start_step"] == 12
    job = cluster.wait_for(job_id, lambda j: j["status"] not in ("training",), 180, "the resumed run to end")
    assert job["status"] == "completed", job["error"]
    assert job["step"] == 24 and [c["step"] for c in job["checkpoints"]] == [18, 24]
    assert job["final_metrics"]["epoch"] == 4

    # The export: one file, the straight run's weights, and the accuracy the job reported.
    status, _ = cluster.call("GET", f"/api/jobs/{job_id}/model?checkpoint=6")
    assert status == 404  # pruned: keep_checkpoints is 2
    path = settings.home / "exported.safetensors"
    assert main(["export", job_id, "-o", str(path), "--api-url", cluster.base]) == 0
    model = load_model(path)
    for k, v in straight.weights.items():
        assert_close(model.state_dict()[k], v, msg=k)
    data = load_dataset(JOB.dataset, settings.data_dir)
    assert evaluate(model, data.val_x, data.val_y, 500).accuracy == job["final_metrics"]["val_accuracy"]
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["metrics"])["val_accuracy"] == job["final_metrics"]["val_accuracy"]
        assert f.metadata()["step"] == "24"

    # Deleting the job deletes its checkpoints.
    cluster.ok("DELETE", f"/api/jobs/{job_id}")
    assert not (cluster.settings.checkpoint_dir / job_id).exists()


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.0]}, "not counts"),
        ({"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}, "not counts"),
        ({"dtype": "F32", "shape": [4], "data_offsets": ["0", "16"]}, "not counts"),
        ({"dtype": "F32", "shape": [4], "data_offsets": [0, 64]}, "lies outside the file"),
        ({"dtype": "X9", "shape": [4], "data_offsets": [0, 16]}, "malformed entry"),
    ],
)
def test_a_malformed_part_never_replaces_a_good_one(tmp_path, entry, message):
    store = CheckpointStore(tmp_path)
    _, _, good = _part(0, 7)
    path = store.write_part("j1", 6, 0, good)
    header = json.dumps({"w": entry}).encode()
    with pytest.raises(TensorFileError, match=message):
        store.write_part("j1", 6, 0, struct.pack("<Q", len(header)) + header + bytes(16))
    assert path.read_bytes() == good and len(list(path.parent.iterdir())) == 1  # no temporary left either
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(TensorFileError, match="not JSON"):
        store.write_part("j1", 6, 0, struct.pack("<Q", len(deep)) + deep)


def test_initializing_again_drops_the_checkpoints_of_the_future_it_replaces(tmp_path):
    store, part = _store_with(tmp_path, 6, 12, 18)
    assert store.drop_after("j1", 6) == [12, 18] and store.steps("j1") == [6]
    store.write_part("j1", 6, 0, part)  # written again: not a checkpoint until committed again
    assert store.steps("j1") == [] and store.drop_after("j1", 0) == [6]


def test_load_model_checks_what_a_file_asks_to_build_before_building_it(tmp_path):
    huge = {"layers": [{"type": "linear", "out_features": 65536}] * 8}
    meta = {"format": "arceus-model/1", "model_config": json.dumps(huge), "sample_shape": "[65536]",
            "sample_ids": "false"}  # fmt: skip
    path = tmp_path / "huge.safetensors"
    from safetensors.torch import save_file  # noqa: PLC0415

    save_file({"0.bias": torch.zeros(1)}, str(path), metadata=meta)
    with pytest.raises(ConfigError, match="parameters"):
        load_model(path)
