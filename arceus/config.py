"""Job and training configuration: the one source of defaults, ranges and names (no torch here).

Jobs are parsed and validated from the original Arceus JSON. ``TRAIN_OPTIONS`` is the
table of training options: ``TrainConfig``'s defaults, the API's marshmallow schema
(``api/schemas.py``) and the CLI's flags (``arceus/cli/options.py``) are all made from it.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any

from .errors import ConfigError
from .plan.layers import Layer, SampleShape, check_spec, resolve
from .plan.schedule import SCHEDULES as _SCHEDULE_FUNCTIONS

__all__ = [
    "DATASETS",
    "SCHEDULES",
    "SEED_JOB",
    "seed_job",
    "TRAIN_OPTIONS",
    "WIRE_CODECS",
    "DatasetConfig",
    "JobConfig",
    "ModelConfig",
    "Option",
    "TrainConfig",
]

DATASETS = ("MNIST", "FashionMNIST", "digits", "CIFAR10", "text")
# Per-channel mean and std of CIFAR10's training images: its default normalization.
CIFAR10_NORMALIZE = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
TEXT_ONLY = {"path", "block_size", "val_fraction"}
IMAGE_ONLY = {"normalize"}
# User-facing wire name -> codec registered in arceus.wire (tests/test_config.py checks they exist;
# config imports no torch, so it cannot ask the registry itself).
WIRE_CODECS = {"fp32": "raw", "fp16": "fp16", "int8": "int8"}
SCHEDULES = tuple(_SCHEDULE_FUNCTIONS)
MAX_LAYER_SIZE = 1 << 16
MAX_LAYERS = 256
MAX_BATCH = 1 << 16
MAX_PARAMS = 1 << 34  # 64 GiB of fp32 weights: more is a typo, not a model for a few Macs
MAX_SEED = 2**31 - 1

# The job of the original Arceus README: what `arceus demo` and `arceus train` run by default.
# Read-only: seed_job() gives a copy to change.
SEED_JOB: dict = {
    "model_config": {"layer_sizes": [784, 128, 64, 10]},
    "dataset_config": {
        "name": "MNIST",
        "batch_size": 256,
        "val_batch_size": 1000,
        "normalize": {"mean": [0.1307], "std": [0.3081]},
    },
}


def seed_job() -> dict:
    """A fresh copy of ``SEED_JOB``, safe to change."""
    return copy.deepcopy(SEED_JOB)


def _check_keys(field_name: str, data: Any, allowed: set[str]) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(field_name, f"must be an object, got {type(data).__name__}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{field_name}.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return data


def _int(field_name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(field_name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(field_name, f"must be between {lo} and {hi}, got {value}")
    return value


def _float(field_name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(field_name, f"must be a number, got {value!r}")
    if value != value or (value <= lo if lo_open else value < lo) or value > hi:
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise ConfigError(field_name, f"must be {bound} and <= {hi}, got {value}")
    return float(value)


@dataclass(frozen=True)
class ModelConfig:
    """A model: the layers themselves, or the original shorthand ``layer_sizes``."""

    # Shorthand: widths of the activations, Linear layers with ReLU between them (after a
    # flatten): layer_sizes[i] -> layer_sizes[i+1].
    layer_sizes: tuple[int, ...] = ()
    # Each {"type": <torch.nn class in lower case>, <its constructor arguments>} (plan/layers.py).
    layers: tuple[dict, ...] = ()

    @classmethod
    def parse(cls, data: Any) -> ModelConfig:
        data = _check_keys("model_config", data, {"layer_sizes", "layers"})
        if ("layers" in data) == ("layer_sizes" in data):
            raise ConfigError("model_config", "give exactly one of 'layers' or 'layer_sizes'")
        if "layers" in data:
            layers = data["layers"]
            if not isinstance(layers, list) or not 1 <= len(layers) <= MAX_LAYERS:
                raise ConfigError("model_config.layers", f"must be a list of 1 to {MAX_LAYERS} layer objects")
            return cls(layers=tuple(check_spec(f"model_config.layers[{i}]", v) for i, v in enumerate(layers)))
        sizes = data.get("layer_sizes")
        if not isinstance(sizes, list):
            raise ConfigError("model_config.layer_sizes", "is required and must be a list of integers")
        if not 2 <= len(sizes) <= MAX_LAYERS + 1:
            raise ConfigError(
                "model_config.layer_sizes", f"needs between 2 and {MAX_LAYERS + 1} entries, got {len(sizes)}"
            )
        for i, s in enumerate(sizes):
            _int(f"model_config.layer_sizes[{i}]", s, 1, MAX_LAYER_SIZE)
        return cls(layer_sizes=tuple(sizes))

    def specs(self) -> list[dict]:
        """The layer objects; ``layer_sizes`` expands to flatten, then linear/relu pairs, logits last."""
        if self.layers:
            return [dict(spec) for spec in self.layers]
        sizes, out = self.layer_sizes, [{"type": "flatten"}]
        for i in range(len(sizes) - 1):
            out.append({"type": "linear", "in_features": sizes[i], "out_features": sizes[i + 1]})
            if i < len(sizes) - 2:
                out.append({"type": "relu"})
        return [check_spec(f"model_config.layer_sizes[{i}]", spec) for i, spec in enumerate(out)]

    def to_dict(self) -> dict:
        return {"layers": [dict(s) for s in self.layers]} if self.layers else {"layer_sizes": list(self.layer_sizes)}

    @staticmethod
    def describe(model_config: dict) -> str:
        """A short name for a model config as the API returns it: ``784-128-64-10``, or its layer types."""
        if "layer_sizes" in model_config:
            return "-".join(map(str, model_config["layer_sizes"]))
        types = [layer["type"] for layer in model_config["layers"]]
        return " ".join(types) if len(types) <= 6 else f"{' '.join(types[:5])} ... ({len(types)} layers)"


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "MNIST"
    batch_size: int = 256
    val_batch_size: int = 1000
    # Per-channel normalization applied once when the dataset is loaded (images).
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)
    # text: a file under ARCEUS_DATA_DIR (None: the offline stand-in, Python's own stdlib
    # sources), cut into blocks of block_size + 1 bytes; its last val_fraction is validation.
    path: str | None = None
    block_size: int = 128
    val_fraction: float = 0.1

    @classmethod
    def parse(cls, data: Any) -> DatasetConfig:
        keys = {"name", "batch_size", "val_batch_size", "normalize", "path", "block_size", "val_fraction"}
        data = _check_keys("dataset_config", data, keys)
        name = data.get("name", cls.name)
        if name not in DATASETS:
            raise ConfigError("dataset_config.name", f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        only = TEXT_ONLY if name != "text" else IMAGE_ONLY
        for key in sorted(only & set(data)):
            raise ConfigError(f"dataset_config.{key}", f"does not apply to the {name} dataset")
        bs = _int("dataset_config.batch_size", data.get("batch_size", cls.batch_size), 1, MAX_BATCH)
        vbs = _int("dataset_config.val_batch_size", data.get("val_batch_size", cls.val_batch_size), 1, MAX_BATCH)
        if name == "text":
            path = data.get("path")
            if path is not None and (not isinstance(path, str) or not _relative_path(path)):
                raise ConfigError(
                    "dataset_config.path", f"must be a relative path under ARCEUS_DATA_DIR without '..', got {path!r}"
                )
            block = _int("dataset_config.block_size", data.get("block_size", cls.block_size), 1, 1 << 14)
            frac = _float("dataset_config.val_fraction", data.get("val_fraction", cls.val_fraction), 0.0, 0.5,
                          lo_open=True)  # fmt: skip
            return cls(name, bs, vbs, (), (), path, block, frac)
        mean, std = CIFAR10_NORMALIZE if name == "CIFAR10" else (cls.mean, cls.std)
        if "normalize" in data:
            norm = _check_keys("dataset_config.normalize", data["normalize"], {"mean", "std"})
            mean = _floats("dataset_config.normalize.mean", norm.get("mean", list(mean)))
            std = _floats("dataset_config.normalize.std", norm.get("std", list(std)))
            if len(mean) != len(std):
                raise ConfigError("dataset_config.normalize", "mean and std must have the same length")
            for i, s in enumerate(std):
                if s <= 0:
                    raise ConfigError(f"dataset_config.normalize.std[{i}]", f"must be > 0, got {s}")
        channels = 3 if name == "CIFAR10" else 1
        if len(mean) != channels:
            raise ConfigError("dataset_config.normalize", f"{name} images have {channels} channel(s), got {len(mean)}")
        return cls(name, bs, vbs, mean, std)

    @property
    def sample(self) -> SampleShape:
        """One sample as the first layer sees it: (block_size,) byte ids for text."""
        if self.name == "text":
            return SampleShape((self.block_size,), ids=True)
        return SampleShape((3, 32, 32)) if self.name == "CIFAR10" else SampleShape((1, 28, 28))

    @property
    def targets(self) -> tuple[int, ...]:
        """The model's output per sample: class scores, or a next-byte score per position."""
        return (self.block_size, 256) if self.name == "text" else (10,)

    def to_dict(self) -> dict:
        out = {"name": self.name, "batch_size": self.batch_size, "val_batch_size": self.val_batch_size}
        if self.name == "text":
            return {**out, "path": self.path, "block_size": self.block_size, "val_fraction": self.val_fraction}
        return {**out, "normalize": {"mean": list(self.mean), "std": list(self.std)}}


def _relative_path(path: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    plain = all(c.isprintable() for c in path)
    return bool(path) and plain and not path.startswith(("/", "~")) and ":" not in path and ".." not in parts


def _floats(field_name: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 4:
        raise ConfigError(field_name, "must be a list of 1 to 4 numbers")
    return tuple(_float(f"{field_name}[{i}]", v, -1e6, 1e6) for i, v in enumerate(value))


@dataclass(frozen=True)
class Option:
    """One training option: its type and default, its range or its choices, and what it means."""

    name: str
    type: type  # int, float, str, or tuple: two floats
    default: int | float | str | tuple
    help: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # ``low`` itself is not allowed
    choices: tuple[str, ...] = ()

    def check(self, value: Any) -> int | float | str:
        """``value`` if it is valid, else a ConfigError naming this option and the rule."""
        if self.choices:
            if value not in self.choices:
                raise ConfigError(self.name, f"unknown {self.name} {value!r} (known: {', '.join(self.choices)})")
            return value
        if self.type is int:
            return _int(self.name, value, int(self.low), int(self.high))
        if self.type is tuple:
            if not isinstance(value, (list, tuple)) or len(value) != 2:
                raise ConfigError(self.name, f"must be a list of 2 numbers, got {value!r}")
            return tuple(_float(f"{self.name}[{i}]", v, self.low, self.high, lo_open=self.low_open)
                         for i, v in enumerate(value))  # fmt: skip
        return _float(self.name, value, self.low, self.high, lo_open=self.low_open)


TRAIN_OPTIONS: dict[str, Option] = {
    o.name: o
    for o in (
        Option("epochs", int, 10, "passes over the training set", 1, 10_000),
        Option("learning_rate", float, 0.1, "step size", 0.0, 100.0, low_open=True),
        Option("optimizer", str, "sgd", "sgd (with momentum) or adamw (betas, eps)", choices=("sgd", "adamw")),
        Option("momentum", float, 0.0, "SGD momentum", 0.0, 0.999),
        Option("betas", tuple, (0.9, 0.999), "AdamW's decay rates of its two moment estimates", 0.0, 0.9999),
        Option("eps", float, 1e-8, "AdamW's term added to the denominator", 1e-12, 1.0),
        Option("weight_decay", float, 0.0, "decoupled weight decay (AdamW), L2 penalty (SGD)", 0.0, 1.0),
        Option("grad_clip", float, 0.0, "clip the global gradient norm, over all stages, to this (0: off)",
               0.0, 1e6),
        Option("micro_batches", int, 1, "micro-batches per mini-batch; gradients accumulate over them", 1, 1024),
        Option("wire", str, "auto", "codec of activations and gradients between stages; auto: each link's "
               "faster of fp32 and int8, measured at initialize (fp32 on fast links, int8 on slow ones)",
               choices=("auto", *WIRE_CODECS)),
        Option("schedule", str, "gpipe", "pipeline schedule", choices=SCHEDULES),
        Option("seed", int, 0, "seeds the order of the training samples (and, in a local arceus train, the weights)",
               0, MAX_SEED),
        Option("checkpoint_every", int, 0, "steps between checkpoints (0: the end of every epoch); the run's "
               "last step is always saved", 0, 10_000_000),
        Option("keep_checkpoints", int, 2, "how many of the job's latest checkpoints are kept", 1, 1000),
        Option("max_recoveries", int, 3, "devices lost mid-run that the job recovers from before it fails", 0, 1000),
    )
}  # fmt: skip


def _default(name: str) -> Any:
    return TRAIN_OPTIONS[name].default


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = _default("epochs")
    learning_rate: float = _default("learning_rate")
    optimizer: str = _default("optimizer")
    momentum: float = _default("momentum")
    betas: tuple[float, float] = _default("betas")
    eps: float = _default("eps")
    weight_decay: float = _default("weight_decay")
    # Largest global gradient norm (all stages together); 0 leaves gradients as they are.
    grad_clip: float = _default("grad_clip")
    # Micro-batches per mini-batch; gradients are accumulated over them.
    micro_batches: int = _default("micro_batches")
    wire: str = _default("wire")
    schedule: str = _default("schedule")
    # Seeds the weights (per layer) and the order of the training samples.
    seed: int = _default("seed")
    # Steps between checkpoints; 0 saves at the end of every epoch (after its evaluation).
    checkpoint_every: int = _default("checkpoint_every")
    keep_checkpoints: int = _default("keep_checkpoints")
    max_recoveries: int = _default("max_recoveries")

    @classmethod
    def parse(cls, data: Any) -> TrainConfig:
        data = _check_keys("train_config", data, set(TRAIN_OPTIONS))
        return cls(**{name: o.check(data.get(name, o.default)) for name, o in TRAIN_OPTIONS.items()})

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class JobConfig:
    model: ModelConfig
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    @classmethod
    def parse(cls, data: Any) -> JobConfig:
        data = _check_keys("job", data, {"model_config", "dataset_config"})
        if "model_config" not in data:
            raise ConfigError("model_config", "is required")
        job = cls(ModelConfig.parse(data["model_config"]), DatasetConfig.parse(data.get("dataset_config", {})))
        job.layers  # noqa: B018 - every layer checked against the shapes that reach it, now
        return job

    @cached_property
    def layers(self) -> list[Layer]:
        """The model's layers, resolved from the dataset's sample shape (inferred sizes filled in)."""
        where = "model_config.layers" if self.model.layers else "model_config.layer_sizes"
        sample = self.dataset.sample
        if sample.ids and not self.model.layers:
            raise ConfigError(
                "model_config.layer_sizes", f"is shorthand for image models; {self.dataset.name} needs layers that "
                "start with an embedding"
            )  # fmt: skip
        try:
            layers = resolve(self.model.specs(), sample, where)
        except ConfigError as e:
            if self.model.layers:
                raise
            # The shorthand can only miss on its first width: say so in its own terms.
            raise ConfigError(
                "model_config.layer_sizes[0]",
                f"is {self.model.layer_sizes[0]}, but {self.dataset.name} samples have {sample.numel} values",
            ) from e
        out, want = layers[-1].output.shape, self.dataset.targets
        # At least as many scores as classes (more are never the right answer, but harmless).
        if len(out) != len(want) or out[:-1] != want[:-1] or out[-1] < want[-1]:
            last = len(self.model.layers or self.model.layer_sizes) - 1
            needs = f"{want[0]} class scores" if len(want) == 1 else f"{list(want)} next-byte scores"
            raise ConfigError(
                f"{where}[{last}]", f"the model's output per sample is {list(out)}; {self.dataset.name} needs {needs}"
            )
        params = sum(layer.params for layer in layers)
        if not 0 < params <= MAX_PARAMS:
            raise ConfigError("model_config", f"has {params:,} parameters; it needs between 1 and {MAX_PARAMS:,}")
        first = layers[0].spec
        if first["type"] == "embedding" and first["num_embeddings"] < want[-1]:
            raise ConfigError(
                f"{where}[0].num_embeddings", f"is {first['num_embeddings']}, but {self.dataset.name} has "
                f"{want[-1]} byte values"
            )  # fmt: skip
        return layers

    def to_dict(self) -> dict:
        return {"model_config": self.model.to_dict(), "dataset_config": self.dataset.to_dict()}
