"""Torch modules for the layer kinds of ``plan/layers.py``, and shards: any contiguous slice of
a model, initialised exactly as the whole.

Every layer with parameters draws them from a generator seeded by ``(seed, k)``, where ``k``
counts the layers with parameters before it, with torch's default distribution for its
type; so stage ``[2, 4)`` of a split model starts with the very tensors that layers 2 and 3
of the unsplit model start with, and ``layer_sizes`` models keep the weights they always had.
Dropout masks come from a generator seeded by ``(seed, step, micro-batch, layer)``
(``SeededDropout``), so a split run draws the masks of the unsplit one.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import JobConfig, ModelConfig
from ..errors import ConfigError
from ..plan.layers import Layer, SampleShape, resolve

__all__ = [
    "MODULES",
    "SeededDropout",
    "Shard",
    "build_model",
    "build_shard",
    "layer_seed",
    "set_dropout_seed",
    "set_dropout_step",
]


def layer_seed(seed: int, index: int) -> int:
    # Distinct, stable stream per (seed, layer); independent of how the model is split.
    return (seed * 1_000_003 + index * 7_919 + 17) % (2**63 - 1)


class SeededDropout(nn.Module):
    """Dropout whose mask depends only on (seed, step, micro-batch, layer): the same in a split
    run as in one process, on any device (the mask is drawn on the CPU). The stage (and the
    reference trainer) say which step and micro-batch runs with ``set_dropout_step``."""

    def __init__(self, p: float, seed: int, layer: int) -> None:
        super().__init__()
        self.p, self.seed, self.layer = p, seed, layer
        self.step = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        step, mb = self.step
        g = torch.Generator().manual_seed(_mask_seed(self.seed, step, mb, self.layer))
        keep = torch.rand(x.shape, generator=g) >= self.p
        return x * keep.to(x.device, x.dtype) / (1 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, layer={self.layer}"


def _mask_seed(seed: int, step: int, mb: int, layer: int) -> int:
    return (seed * 1_000_003 + step * 7_919 + mb * 104_729 + layer * 15_485_863 + 31) % (2**63 - 1)


def set_dropout_seed(model: nn.Module, seed: int) -> None:
    """Masks from the run's seed: a worker built its shard at initialize, with the init seed."""
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.seed = seed


def set_dropout_step(model: nn.Module, step: int, mb: int) -> None:
    for m in model.modules():
        if isinstance(m, SeededDropout):
            m.step = (step, mb)


class PositionalEmbedding(nn.Module):
    """A learned vector per position, added to the input: (B, T, D) -> (B, T, D)."""

    def __init__(self, num_positions: int, embedding_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_positions, embedding_dim))
        nn.init.normal_(self.weight)  # as nn.Embedding's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight[: x.shape[1]]  # (B, T, D) + (T, D)


class TransformerBlock(nn.Module):
    """Pre-LayerNorm causal self-attention then an MLP, each inside a residual (nanoGPT's Block).
    ``dropout`` applies to each branch's output before it is added, with seeded masks."""

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: int, dropout: float, seed: int, layer: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc1 = nn.Linear(d_model, mlp_ratio * d_model)
        self.fc2 = nn.Linear(mlp_ratio * d_model, d_model)
        # Two masks per step: distinct layer ids, out of the range of real layer indices.
        self.drop1 = SeededDropout(dropout, seed, (layer + 1) * 1_000_000)
        self.drop2 = SeededDropout(dropout, seed, (layer + 1) * 1_000_000 + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape  # (B, T, D)
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)  # 3 x (B, T, D)
        q, k, v = (z.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2) for z in (q, k, v))  # (B, H, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, hd)
        x = x + self.drop1(self.proj(y.transpose(1, 2).reshape(b, t, d)))  # (B, T, D)
        return x + self.drop2(self.fc2(F.gelu(self.fc1(self.ln2(x)))))  # (B, T, D)


def _pair(v: int | list[int]) -> int | tuple[int, int]:
    return v if isinstance(v, int) else (v[0], v[1])


def _linear(s: dict, gen: torch.Generator) -> nn.Module:
    layer = nn.Linear(s["in_features"], s["out_features"], bias=s["bias"])
    # torch's default init (kaiming_uniform with a=sqrt(5) is U(-1/sqrt(fan_in), 1/sqrt(fan_in))), written
    # out so that layer_sizes models keep the exact weights Arceus always gave them.
    bound = 1.0 / math.sqrt(s["in_features"])
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=gen)
        if layer.bias is not None:
            layer.bias.uniform_(-bound, bound, generator=gen)
    return layer


def _norm(cls: type[nn.Module]) -> Callable[[dict], nn.Module]:
    return lambda s: cls(s["num_features"], eps=s["eps"], momentum=s["momentum"], affine=s["affine"],
                         track_running_stats=s["track_running_stats"])  # fmt: skip


# Builders: (resolved spec, generator of the layer's seed, seed, layer index) -> module.
MODULES: dict[str, Callable[[dict, torch.Generator, int, int], nn.Module]] = {
    "linear": lambda s, g, seed, i: _linear(s, g),
    "conv2d": lambda s, g, seed, i: nn.Conv2d(
        s["in_channels"], s["out_channels"], _pair(s["kernel_size"]), stride=_pair(s["stride"]),
        padding=_pair(s["padding"]), dilation=_pair(s["dilation"]), groups=s["groups"], bias=s["bias"]),
    "maxpool2d": lambda s, g, seed, i: nn.MaxPool2d(
        _pair(s["kernel_size"]), stride=None if s["stride"] is None else _pair(s["stride"]),
        padding=_pair(s["padding"]), dilation=_pair(s["dilation"]), ceil_mode=s["ceil_mode"]),
    "avgpool2d": lambda s, g, seed, i: nn.AvgPool2d(
        _pair(s["kernel_size"]), stride=None if s["stride"] is None else _pair(s["stride"]),
        padding=_pair(s["padding"]), ceil_mode=s["ceil_mode"], count_include_pad=s["count_include_pad"]),
    "adaptiveavgpool2d": lambda s, g, seed, i: nn.AdaptiveAvgPool2d(_pair(s["output_size"])),
    "flatten": lambda s, g, seed, i: nn.Flatten(s["start_dim"], s["end_dim"]),
    "relu": lambda s, g, seed, i: nn.ReLU(),
    "gelu": lambda s, g, seed, i: nn.GELU(approximate=s["approximate"]),
    "tanh": lambda s, g, seed, i: nn.Tanh(),
    "dropout": lambda s, g, seed, i: SeededDropout(s["p"], seed, i),
    "batchnorm1d": lambda s, g, seed, i: _norm(nn.BatchNorm1d)(s),
    "batchnorm2d": lambda s, g, seed, i: _norm(nn.BatchNorm2d)(s),
    "layernorm": lambda s, g, seed, i: nn.LayerNorm(
        s["normalized_shape"], eps=s["eps"], elementwise_affine=s["elementwise_affine"], bias=s["bias"]),
    "embedding": lambda s, g, seed, i: nn.Embedding(s["num_embeddings"], s["embedding_dim"]),
    "positional_embedding": lambda s, g, seed, i: PositionalEmbedding(s["num_positions"], s["embedding_dim"]),
    "transformer_block": lambda s, g, seed, i: TransformerBlock(
        s["d_model"], s["n_heads"], s["mlp_ratio"], s["dropout"], seed, i),
}  # fmt: skip


def _build(layer: Layer, seed: int, k: int) -> nn.Module:
    """One layer; ``k`` counts the layers with parameters before it."""
    builder = MODULES.get(layer.type)
    if builder is None:
        raise ConfigError(f"layers[{layer.index}].type", f"no torch module for layer type {layer.type!r}")
    # torch's default init draws from the global generator: seed it for this layer alone, and
    # leave the caller's random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(layer_seed(seed, k))
        return builder(layer.spec, torch.Generator().manual_seed(layer_seed(seed, k)), seed, layer.index)


class Shard(nn.Sequential):
    """Layers ``[start, end)`` of a model, named by their index in the whole model, so a shard's
    ``state_dict`` keys are those of ``build_model``'s (``"3.weight"``)."""

    def __init__(self, layers: Sequence[Layer], start: int, end: int, seed: int) -> None:
        if not 0 <= start < end <= len(layers):
            raise ConfigError("shard", f"layer range [{start}, {end}) is outside the model's {len(layers)} layers")
        before = sum(1 for layer in layers[:start] if layer.params > 0)
        modules: OrderedDict[str, nn.Module] = OrderedDict()
        for layer in layers[start:end]:
            modules[str(layer.index)] = _build(layer, seed, before)
            before += layer.params > 0
        super().__init__(modules)
        self.start, self.end = start, end
        self.input, self.output = layers[start].input, layers[end - 1].output


def build_shard(job: JobConfig, start: int, end: int, seed: int) -> Shard:
    return Shard(job.layers, start, end, seed)


def build_model(model_config: dict, sample_shape: Sequence[int], seed: int = 0, ids: bool = False) -> Shard:
    """The unsplit model (a ``torch.nn.Sequential``) for a ``model_config`` and one sample's shape
    (``ids``: the samples are token ids). Every split is tested against it; its ``state_dict``
    keys are the names checkpoints and exports use."""
    layers = resolve(ModelConfig.parse(model_config).specs(), SampleShape(tuple(sample_shape), ids))
    return Shard(layers, 0, len(layers), seed)
