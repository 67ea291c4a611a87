"""Models beyond the MLP: every layer kind built from data, split anywhere, trained exactly as one process."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import write_corpus, write_mnist

import arceus
from arceus.config import SEED_JOB, DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.model import Shard, layer_seed
from arceus.engine.reference import train_reference
from arceus.errors import ConfigError, RunFailed
from arceus.launch.stages import train_local
from arceus.plan.layers import KINDS, SampleShape, resolve

CNN = [
    {"type": "conv2d", "out_channels": 32, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 64, "kernel_size": 3, "padding": 1}, {"type": "relu"},
    {"type": "maxpool2d", "kernel_size": 2},
    {"type": "flatten"}, {"type": "linear", "out_features": 128}, {"type": "relu"},
    {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": 10},
]  # fmt: skip
GPT = [
    {"type": "embedding", "num_embeddings": 256, "embedding_dim": 128},
    {"type": "positional_embedding", "num_positions": 128, "embedding_dim": 128},
    {"type": "transformer_block", "d_model": 128, "n_heads": 4, "mlp_ratio": 4, "dropout": 0.0},
    {"type": "transformer_block", "d_model": 128, "n_heads": 4, "mlp_ratio": 4, "dropout": 0.0},
    {"type": "layernorm"}, {"type": "linear", "out_features": 256},
]  # fmt: skip
# Every vision kind, each with its options, in two models that fit 28x28 MNIST samples.
KINDS_A = [
    {"type": "conv2d", "out_channels": 6, "kernel_size": [3, 5], "padding": [1, 2]}, {"type": "batchnorm2d"},
    {"type": "relu"}, {"type": "maxpool2d", "kernel_size": 2},
    {"type": "conv2d", "out_channels": 8, "kernel_size": 3, "stride": 2, "groups": 2, "bias": False},
    {"type": "gelu"}, {"type": "avgpool2d", "kernel_size": 2, "stride": 1},
    {"type": "conv2d", "out_channels": 8, "kernel_size": 1}, {"type": "adaptiveavgpool2d", "output_size": [3, 3]},
    {"type": "flatten"}, {"type": "linear", "out_features": 32}, {"type": "tanh"}, {"type": "dropout", "p": 0.3},
    {"type": "linear", "out_features": 10},
]  # fmt: skip
KINDS_B = [
    {"type": "flatten", "start_dim": 2}, {"type": "batchnorm1d"},  # (1, 784): channels and a length
    {"type": "flatten"}, {"type": "linear", "out_features": 48}, {"type": "layernorm"}, {"type": "gelu",
    "approximate": "tanh"}, {"type": "dropout", "p": 0.5},
    {"type": "linear", "out_features": 24, "in_features": 48}, {"type": "batchnorm1d", "momentum": 0.3},
    {"type": "relu"}, {"type": "linear", "out_features": 10},
]  # fmt: skip


def test_every_listed_kind_is_supported():
    required = "linear conv2d maxpool2d avgpool2d adaptiveavgpool2d flatten relu gelu tanh dropout batchnorm1d " \
               "batchnorm2d layernorm embedding positional_embedding transformer_block"  # fmt: skip
    assert set(required.split()) <= set(KINDS)
    covered = {layer["type"] for model in (CNN, GPT, KINDS_A, KINDS_B) for layer in model}
    assert covered == set(KINDS)


@pytest.mark.parametrize(("layers", "sample", "ids", "out"), [
    (CNN, (1, 28, 28), False, (10,)), (KINDS_A, (1, 28, 28), False, (10,)), (KINDS_B, (1, 28, 28), False, (10,)),
    (GPT, (64,), True, (64, 256)),
])  # fmt: skip
def test_build_model_is_a_sequential_whose_shapes_and_sizes_match_the_plan(layers, sample, ids, out):
    model = arceus.build_model({"layers": layers}, sample, seed=3, ids=ids)
    planned = resolve(layers, SampleShape(sample, ids))
    assert isinstance(model, torch.nn.Sequential) and len(model) == len(layers)
    x = torch.randint(0, 256, (2, *sample)) if ids else torch.randn(2, *sample)
    model.eval()
    assert model(x).shape == (2, *out)
    for layer, module in zip(planned, model, strict=True):
        assert sum(p.numel() for p in module.parameters()) == layer.params, layer.type
    # Parameter names are the layers' indices in the model: what checkpoints and exports use.
    assert {k.split(".")[0] for k in model.state_dict()} == {str(i) for i, p in enumerate(planned) if p.params} | {
        str(i) for i, p in enumerate(planned) if p.type.startswith("batchnorm")
    }


@pytest.mark.parametrize("layers", [CNN, KINDS_A, GPT])
def test_any_slice_starts_with_the_weights_of_the_whole(layers):
    ids = layers is GPT
    planned = resolve(layers, SampleShape((64,) if ids else (1, 28, 28), ids))
    whole = Shard(planned, 0, len(planned), seed=5).state_dict()
    for start, end in ((0, 2), (2, len(planned)), (1, len(planned) - 1)):
        part = Shard(planned, start, end, seed=5).state_dict()
        assert part and set(part) <= set(whole)
        for name, tensor in part.items():
            assert torch.equal(tensor, whole[name]), name


def test_layer_sizes_models_keep_the_weights_they_always_had():
    model = arceus.build_model(SEED_JOB["model_config"], (1, 28, 28), seed=7)
    for k, (name, fan_in) in enumerate((("1", 784), ("3", 128), ("5", 64))):
        g = torch.Generator().manual_seed(layer_seed(7, k))
        bound = 1 / math.sqrt(fan_in)
        weight = torch.empty_like(model.get_submodule(name).weight).uniform_(-bound, bound, generator=g)
        bias = torch.empty_like(model.get_submodule(name).bias).uniform_(-bound, bound, generator=g)
        assert torch.equal(model.get_submodule(name).weight, weight) and torch.equal(
            model.get_submodule(name).bias, bias
        )


@pytest.mark.parametrize(("layers", "field", "message"), [
    ([{"type": "conv3d"}], "model_config.layers[0].type", "unknown layer type 'conv3d'"),
    ([{"type": "linear"}], "model_config.layers[0].out_features", "is required for linear"),
    ([{"type": "linear", "out_features": 10, "colour": 1}], "model_config.layers[0].colour", "not a field of linear"),
    ([{"type": "conv2d", "out_channels": 4, "kernel_size": 0}], "model_config.layers[0].kernel_size", "between 1"),
    ([{"type": "flatten"}, {"type": "linear", "in_features": 100, "out_features": 10}],
     "model_config.layers[1].in_features", "is 100, but the input reaching it gives 784"),
    ([{"type": "flatten"}, {"type": "conv2d", "out_channels": 4, "kernel_size": 3}], "model_config.layers[1]",
     r"conv2d needs \(channels, height, width\), got a sample of shape \[784\]"),
    ([{"type": "conv2d", "out_channels": 4, "kernel_size": 29}], "model_config.layers[0]", "does not fit"),
    ([{"type": "embedding", "num_embeddings": 10, "embedding_dim": 4}], "model_config.layers[0].type",
     "takes token ids"),
    ([{"type": "flatten"}, {"type": "linear", "out_features": 5}], "model_config.layers[1]", "needs 10 class scores"),
    ([{"type": "dropout", "p": 1.5}], "model_config.layers[0].p", "between 0.0 and 0.99"),
    ([{"type": "adaptiveavgpool2d", "output_size": [1, 10]}, {"type": "flatten"}], "model_config",
     "has 0 parameters"),
    ([{"type": "layernorm", "normalized_shape": [27, 28]}, {"type": "flatten"}, {"type": "linear", "out_features": 10}],
     "model_config.layers[0].normalized_shape", r"is \[27, 28\], but the input reaching it gives \[28, 28\]"),
])  # fmt: skip
def test_bad_layer_configs_name_the_layer_and_the_field(layers, field, message):
    with pytest.raises(ConfigError, match=message) as e:
        JobConfig.parse({"model_config": {"layers": layers}})
    assert e.value.field == field


def test_what_torch_allows_is_allowed():
    """A convolution may pad more than half its kernel (pooling may not); layernorm normalizes
    over as many trailing dimensions as its normalized_shape has."""
    layers = [{"type": "conv2d", "out_channels": 2, "kernel_size": 1, "padding": 1},  # (2, 30, 30)
              {"type": "layernorm", "normalized_shape": [30, 30]}, {"type": "flatten"},
              {"type": "linear", "out_features": 10}]  # fmt: skip
    job = JobConfig.parse({"model_config": {"layers": layers}})
    assert job.layers[1].params == 2 * 30 * 30
    assert arceus.build_model({"layers": layers}, (1, 28, 28))(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError, match="padding must be at most half the kernel_size"):
        JobConfig.parse({"model_config": {"layers": [{"type": "maxpool2d", "kernel_size": 2, "padding": 2}]}})


@pytest.mark.parametrize(("dataset", "layers", "field", "message"), [
    ({"name": "text", "block_size": 8}, [{"type": "embedding", "num_embeddings": 10, "embedding_dim": 8},
                                         {"type": "linear", "out_features": 256}],
     "model_config.layers[0].num_embeddings", "is 10, but text has 256 byte values"),
    ({"name": "text", "block_size": 8}, None, "model_config.layer_sizes", "shorthand for image models"),
    ({"name": "text", "path": "a\u0000b"}, None, "dataset_config.path", "relative path"),
])  # fmt: skip
def test_bad_text_jobs_name_the_field(dataset, layers, field, message):
    model = {"layers": layers} if layers else {"layer_sizes": [8, 256]}
    with pytest.raises(ConfigError, match=message) as e:
        JobConfig.parse({"model_config": model, "dataset_config": dataset})
    assert e.value.field == field


def test_batchnorm_with_one_sample_per_micro_batch_is_refused_before_the_run(redis_url, settings, small_mnist):
    job = JobConfig(ModelConfig(layers=tuple(KINDS_B)), DatasetConfig(batch_size=64, val_batch_size=128))
    with pytest.raises(RunFailed, match=r"BatchNorm needs at least 2 samples per micro-batch, but batches of \[64\]"):
        train_local(job, TrainConfig(epochs=1, micro_batches=64), 2, redis_url, settings)


@pytest.fixture
def small_mnist(settings):
    write_mnist(settings.data_dir, n_train=640, n_val=128)
    return settings.data_dir


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize(("name", "layers", "stages"), [("kinds_a", KINDS_A, 3), ("kinds_b", KINDS_B, 3),
                                                         ("cnn", CNN, 2)])  # fmt: skip
def test_a_split_model_trains_exactly_as_one_process(redis_url, settings, small_mnist, name, layers, stages, schedule):
    """fp32 wire, dropout on, BatchNorm's per-micro-batch statistics: the weights (and running
    statistics) after 10 steps equal the unsplit model's, trained on the same micro-batches."""
    job = JobConfig(ModelConfig(layers=tuple(layers)), DatasetConfig(batch_size=64, val_batch_size=128))
    train = TrainConfig(epochs=1, learning_rate=0.05, momentum=0.9, micro_batches=4, wire="fp32", seed=2,
                        schedule=schedule)  # fmt: skip
    result = train_local(job, train, stages, redis_url, settings, keep_weights=True)
    model, history = train_reference(job.model, load_dataset(job.dataset, small_mnist), train, 64, 128)
    ref = model.state_dict()
    assert set(result.weights) == set(ref)
    for key, tensor in ref.items():
        torch.testing.assert_close(result.weights[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert result.epochs[0][key] == pytest.approx(history[0][key], rel=1e-4, abs=1e-5), key


def test_the_docs_list_every_kind_with_its_fields_and_the_examples_parse():
    root = Path(__file__).resolve().parent.parent
    doc = (root / "docs" / "models.md").read_text()
    for kind in KINDS.values():
        row = next(line for line in doc.splitlines() if line.startswith(f"| `{kind.name}` |"))
        assert all(f"`{name}`" in row for name in kind.args), kind.name
    for example in sorted((root / "examples").glob("*.json")):
        JobConfig.parse(json.loads(example.read_text()))


TINY_GPT = [
    {"type": "embedding", "num_embeddings": 256, "embedding_dim": 32},
    {"type": "positional_embedding", "num_positions": 32, "embedding_dim": 32},
    {"type": "transformer_block", "d_model": 32, "n_heads": 2, "mlp_ratio": 4, "dropout": 0.1},
    {"type": "dropout", "p": 0.1},
    {"type": "transformer_block", "d_model": 32, "n_heads": 4, "mlp_ratio": 2, "dropout": 0.1},
    {"type": "layernorm"}, {"type": "linear", "out_features": 256},
]  # fmt: skip


@pytest.mark.parametrize(("stages", "schedule"), [(2, "gpipe"), (3, "1f1b")])
def test_a_split_gpt_trains_exactly_as_one_process(redis_url, settings, stages, schedule):
    """Token ids stay on stage 0 (it holds the embedding); (B, T, D) activations cross; the
    targets (B, T) reach the last stage exactly; dropout inside and between the blocks."""
    write_corpus(settings.data_dir / "corpus.txt", n_bytes=12_000)
    dataset = DatasetConfig(name="text", path="corpus.txt", block_size=24, batch_size=16, val_batch_size=32)
    job = JobConfig(ModelConfig(layers=tuple(TINY_GPT)), dataset)
    train = TrainConfig(epochs=1, learning_rate=0.1, momentum=0.9, micro_batches=4, wire="fp32", seed=4,
                        schedule=schedule)  # fmt: skip
    result = train_local(job, train, stages, redis_url, settings, keep_weights=True)
    model, history = train_reference(job.model, load_dataset(dataset, settings.data_dir), train, 16, 32)
    for key, tensor in model.state_dict().items():
        torch.testing.assert_close(result.weights[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    epoch = result.epochs[0]
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert epoch[key] == pytest.approx(history[0][key], rel=1e-4, abs=1e-5), key
    assert epoch["val_bits_per_byte"] == pytest.approx(epoch["val_loss"] / math.log(2))
    assert epoch["tokens_per_s"] == pytest.approx(epoch["samples_per_s"] * 24)


@pytest.mark.parametrize(("optimizer", "schedule"), [("adamw", "1f1b"), ("sgd", "gpipe")])
def test_adamw_and_clipping_by_the_global_norm_equal_one_process(redis_url, settings, small_mnist, optimizer, schedule):
    """The gradient norm is global: every stage's per-parameter norms meet in Redis, so each stage
    scales its gradients as one process's clip_grad_norm_ scales them all."""
    # No bias right before a norm: the norm cancels its gradient, and Adam would amplify the
    # rounding noise left in its place (a property of the model, not of the split).
    layers = [{"type": "flatten"}, {"type": "linear", "out_features": 48, "bias": False}, {"type": "layernorm"},
              {"type": "gelu"}, {"type": "dropout", "p": 0.3}, {"type": "linear", "out_features": 24, "bias": False},
              {"type": "batchnorm1d"}, {"type": "relu"}, {"type": "linear", "out_features": 10}]  # fmt: skip
    job = JobConfig(ModelConfig(layers=tuple(layers)), DatasetConfig(batch_size=64, val_batch_size=128))
    train = TrainConfig(epochs=1, learning_rate=0.01, optimizer=optimizer, momentum=0.9, betas=(0.8, 0.99),
                        weight_decay=0.01, grad_clip=0.05, micro_batches=2, wire="fp32", seed=1,
                        schedule=schedule)  # fmt: skip
    result = train_local(job, train, 3, redis_url, settings, keep_weights=True)
    data = load_dataset(job.dataset, small_mnist)
    # Adam divides by the root of tiny second moments: a different float summation order (torch's
    # thread count) alone moves its weights by ~3e-5 after 10 steps, SGD's by ~1e-7. The stages run
    # one thread each, so the reference does too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clipped, _ = train_reference(job.model, data, train, 64, 128)
        unclipped, _ = train_reference(job.model, data, dataclasses.replace(train, grad_clip=0.0), 64, 128)
    finally:
        torch.set_num_threads(threads)
    for key, tensor in clipped.state_dict().items():
        torch.testing.assert_close(result.weights[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
    # The clip was at work: without it the weights end elsewhere.
    assert not torch.allclose(unclipped.state_dict()["1.weight"], clipped.state_dict()["1.weight"], atol=1e-4)


def test_sizes_are_inferred_from_each_datasets_samples():
    cifar = JobConfig.parse({"model_config": {"layers": CNN}, "dataset_config": {"name": "CIFAR10"}})
    assert cifar.layers[0].spec["in_channels"] == 3 and cifar.layers[7].spec["in_features"] == 64 * 8 * 8
    mnist = JobConfig.parse({"model_config": {"layers": CNN}})
    assert mnist.layers[0].spec["in_channels"] == 1 and mnist.layers[7].spec["in_features"] == 64 * 7 * 7
