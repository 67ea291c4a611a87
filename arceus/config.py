"""Job configuration: parsed and validated from the original Arceus JSON (no torch here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = [
    "DATASETS",
    "SCHEDULES",
    "WIRE_CODECS",
    "DatasetConfig",
    "JobConfig",
    "ModelConfig",
    "TrainConfig",
]

DATASETS = ("MNIST", "FashionMNIST", "digits")
# User-facing wire name -> codec registered in arceus.wire.
WIRE_CODECS = {"fp32": "raw", "fp16": "fp16", "int8": "int8"}
SCHEDULES = ("gpipe", "1f1b")  # names of arceus.schedule.SCHEDULES (config imports no torch)
MAX_LAYER_SIZE = 1 << 16
MAX_LAYERS = 256
MAX_BATCH = 1 << 16


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
    # Widths of the activations: layer i maps layer_sizes[i] -> layer_sizes[i+1].
    layer_sizes: tuple[int, ...]

    @classmethod
    def parse(cls, data: Any) -> ModelConfig:
        data = _check_keys("model_config", data, {"layer_sizes"})
        sizes = data.get("layer_sizes")
        if not isinstance(sizes, list):
            raise ConfigError("model_config.layer_sizes", "is required and must be a list of integers")
        if not 2 <= len(sizes) <= MAX_LAYERS + 1:
            raise ConfigError(
                "model_config.layer_sizes", f"needs between 2 and {MAX_LAYERS + 1} entries, got {len(sizes)}"
            )
        for i, s in enumerate(sizes):
            _int(f"model_config.layer_sizes[{i}]", s, 1, MAX_LAYER_SIZE)
        return cls(tuple(sizes))

    @property
    def num_layers(self) -> int:
        return len(self.layer_sizes) - 1

    def to_dict(self) -> dict:
        return {"layer_sizes": list(self.layer_sizes)}


@dataclass(frozen=True)
class DatasetConfig:
    name: str = "MNIST"
    batch_size: int = 256
    val_batch_size: int = 1000
    # Per-channel normalization applied once when the dataset is loaded.
    mean: tuple[float, ...] = (0.1307,)
    std: tuple[float, ...] = (0.3081,)

    @classmethod
    def parse(cls, data: Any) -> DatasetConfig:
        data = _check_keys("dataset_config", data, {"name", "batch_size", "val_batch_size", "normalize"})
        name = data.get("name", cls.name)
        if name not in DATASETS:
            raise ConfigError("dataset_config.name", f"unknown dataset {name!r} (known: {', '.join(DATASETS)})")
        bs = _int("dataset_config.batch_size", data.get("batch_size", cls.batch_size), 1, MAX_BATCH)
        vbs = _int("dataset_config.val_batch_size", data.get("val_batch_size", cls.val_batch_size), 1, MAX_BATCH)
        mean, std = cls.mean, cls.std
        if "normalize" in data:
            norm = _check_keys("dataset_config.normalize", data["normalize"], {"mean", "std"})
            mean = _floats("dataset_config.normalize.mean", norm.get("mean", list(mean)))
            std = _floats("dataset_config.normalize.std", norm.get("std", list(std)))
            if len(mean) != len(std):
                raise ConfigError("dataset_config.normalize", "mean and std must have the same length")
            for i, s in enumerate(std):
                if s <= 0:
                    raise ConfigError(f"dataset_config.normalize.std[{i}]", f"must be > 0, got {s}")
        return cls(name, bs, vbs, mean, std)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "val_batch_size": self.val_batch_size,
            "normalize": {"mean": list(self.mean), "std": list(self.std)},
        }


def _floats(field_name: str, value: Any) -> tuple[float, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= 4:
        raise ConfigError(field_name, "must be a list of 1 to 4 numbers")
    return tuple(_float(f"{field_name}[{i}]", v, -1e6, 1e6) for i, v in enumerate(value))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    learning_rate: float = 0.1
    momentum: float = 0.0
    # Micro-batches per mini-batch; gradients are accumulated over them.
    micro_batches: int = 1
    wire: str = "int8"
    schedule: str = "gpipe"
    # Seeds the weights (per layer) and the order of the training samples.
    seed: int = 0

    @classmethod
    def parse(cls, data: Any) -> TrainConfig:
        data = _check_keys(
            "train_config", data, {"epochs", "learning_rate", "momentum", "micro_batches", "wire", "schedule", "seed"}
        )
        wire = data.get("wire", cls.wire)
        if wire not in WIRE_CODECS:
            raise ConfigError("wire", f"unknown wire codec {wire!r} (known: {', '.join(WIRE_CODECS)})")
        schedule = data.get("schedule", cls.schedule)
        if schedule not in SCHEDULES:
            raise ConfigError("schedule", f"unknown schedule {schedule!r} (known: {', '.join(SCHEDULES)})")
        return cls(
            epochs=_int("epochs", data.get("epochs", cls.epochs), 1, 10_000),
            learning_rate=_float(
                "learning_rate", data.get("learning_rate", cls.learning_rate), 0.0, 100.0, lo_open=True
            ),
            momentum=_float("momentum", data.get("momentum", cls.momentum), 0.0, 0.999),
            micro_batches=_int("micro_batches", data.get("micro_batches", cls.micro_batches), 1, 1024),
            wire=wire,
            schedule=schedule,
            seed=_int("seed", data.get("seed", cls.seed), 0, 2**31 - 1),
        )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class JobConfig:
    model: ModelConfig
    dataset: DatasetConfig = field(default_factory=DatasetConfig)

    @classmethod
    def parse(cls, data: Any) -> JobConfig:
        data = _check_keys("job", data, {"model_config", "dataset_config"})
        if "model_config" not in data:
            raise ConfigError("model_config", "is required")
        return cls(ModelConfig.parse(data["model_config"]), DatasetConfig.parse(data.get("dataset_config", {})))

    def to_dict(self) -> dict:
        return {"model_config": self.model.to_dict(), "dataset_config": self.dataset.to_dict()}
