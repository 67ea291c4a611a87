"""Layer specs and shards: any contiguous slice of a model, initialised exactly as the whole.

A model is a list of layer specs (plain dicts). Each layer's weights come from a
generator seeded by ``(seed, layer index)``, so stage ``[2, 4)`` of a split model
starts with the very tensors that layers 2 and 3 of the unsplit model start with.
New layer kinds register a builder in ``LAYER_KINDS``; the engine never looks inside.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError

__all__ = ["LAYER_KINDS", "Shard", "build_shard", "layer_flops", "layer_seed", "layer_specs", "train_flops_per_sample"]


def layer_specs(model: ModelConfig) -> list[dict]:
    """The original format: Linear layers, ReLU between them, raw logits at the end."""
    sizes = model.layer_sizes
    last = len(sizes) - 2
    return [
        {"kind": "linear", "in": sizes[i], "out": sizes[i + 1], "activation": None if i == last else "relu"}
        for i in range(len(sizes) - 1)
    ]


def layer_seed(seed: int, index: int) -> int:
    # Distinct, stable stream per (seed, layer); independent of how the model is split.
    return (seed * 1_000_003 + index * 7_919 + 17) % (2**63 - 1)


class LinearLayer(nn.Module):
    def __init__(self, spec: dict, generator: torch.Generator) -> None:
        super().__init__()
        fan_in, fan_out = spec["in"], spec["out"]
        self.linear = nn.Linear(fan_in, fan_out)
        # nn.Linear's default init (kaiming_uniform with a=sqrt(5) gives U(-1/sqrt(fan_in), ...)),
        # drawn from our generator so the result does not depend on global RNG state.
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=generator)
            self.linear.bias.uniform_(-bound, bound, generator=generator)
        self.relu = spec.get("activation") == "relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in) -> (B, out)
        y = self.linear(x)
        return torch.relu(y) if self.relu else y


LAYER_KINDS: dict[str, Callable[[dict, torch.Generator], nn.Module]] = {"linear": LinearLayer}


def layer_flops(spec: dict) -> int:
    """Forward FLOPs per sample (multiply and add counted as 2); backward costs about 2x this."""
    if spec["kind"] == "linear":
        return 2 * spec["in"] * spec["out"] + spec["out"]
    raise ConfigError("kind", f"no FLOP count for layer kind {spec['kind']!r}")


def train_flops_per_sample(specs: list[dict], start: int) -> int:
    """FLOPs a training sample costs layers ``specs`` (starting at global layer ``start``):
    forward, the weight gradient, and the input gradient except for layer 0, whose
    input (the data) needs none."""
    total = 0
    for i, spec in enumerate(specs):
        fwd = layer_flops(spec)
        total += fwd + fwd + (fwd if start + i > 0 else 0)
    return total


class Shard(nn.Module):
    """Layers ``[start, end)`` of a model; parameter names use the global layer index."""

    def __init__(self, specs: list[dict], start: int, end: int, seed: int) -> None:
        super().__init__()
        if not 0 <= start < end <= len(specs):
            raise ConfigError("shard", f"layer range [{start}, {end}) is outside the model's {len(specs)} layers")
        self.start, self.end = start, end
        self.specs = specs[start:end]
        self.layers = nn.ModuleDict()
        for i in range(start, end):
            spec = specs[i]
            builder = LAYER_KINDS.get(spec["kind"])
            if builder is None:
                raise ConfigError(f"layers[{i}].kind", f"unknown layer kind {spec['kind']!r}")
            gen = torch.Generator().manual_seed(layer_seed(seed, i))
            self.layers[str(i)] = builder(spec, gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x

    @property
    def in_features(self) -> int:
        return self.specs[0]["in"]

    @property
    def out_features(self) -> int:
        return self.specs[-1]["out"]

    def flops_per_sample(self) -> int:
        return sum(layer_flops(s) for s in self.specs)


def build_shard(model: ModelConfig, start: int, end: int, seed: int) -> Shard:
    return Shard(layer_specs(model), start, end, seed)
