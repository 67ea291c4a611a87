"""Layer kinds as data (no torch): their fields, the input sizes inferred from the shape that
reaches them, their output shapes, parameter counts and FLOPs.

A model is a list of layer objects, ``{"type": "conv2d", "out_channels": 32, ...}``: ``type``
is the torch.nn class name in lower case and every other field is that class's constructor
argument under torch's own name. Input sizes (``in_features``, ``in_channels``,
``num_features``, ``normalized_shape``, ``embedding_dim`` of a positional embedding,
``d_model``) are inferred from the shape that reaches the layer, as torch's Lazy modules
do; given, they must match. ``resolve`` walks the list from the dataset's sample shape and
returns every layer complete, or a ``ConfigError`` naming the layer and the field.

Shapes here are one sample's (no batch dimension). ``engine/model.py`` builds the torch
modules from the resolved specs; the API, the partitioner and the FLOP counts use this
module alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["KINDS", "Layer", "SampleShape", "resolve", "saved_values", "train_flops_per_sample"]

Shape = tuple[int, ...]
_REQUIRED = object()
_BIG = 1 << 24


@dataclass(frozen=True)
class SampleShape:
    """One sample as it enters a layer: its shape, and whether it holds token ids (integers)."""

    shape: Shape
    ids: bool = False

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Arg:
    type: str  # "int", "float", "bool", "pair" (an int or [int, int]), "choice", "shape" (int or list)
    default: Any = _REQUIRED
    low: float = 0
    high: float = _BIG
    choices: tuple = ()
    inferred: bool = False  # an input size: taken from the input shape when not given


@dataclass(frozen=True)
class Kind:
    name: str
    doc: str
    args: dict[str, Arg] = field(default_factory=dict)
    # Values of the inferred args, from the input shape (and the args given): raise ValueError when it does not fit.
    infer: Callable[[dict, Shape], dict] = lambda spec, s: {}
    out: Callable[[dict, Shape], Shape] = lambda spec, s: s  # output shape; ValueError when impossible
    params: Callable[[dict], int] = lambda spec: 0
    flops: Callable[[dict, Shape, Shape], int] = lambda spec, s, o: 0  # forward, per sample
    takes_ids: bool = False  # its input is token ids


@dataclass(frozen=True)
class Layer:
    """A resolved layer: every field filled in, the shapes in and out, parameters, forward FLOPs."""

    index: int
    spec: dict
    input: SampleShape
    output: SampleShape
    params: int
    flops: int

    @property
    def type(self) -> str:
        return self.spec["type"]


# ------------------------------------------------------------------ shape helpers
def _pair(v: int | list[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _rank(s: Shape, ranks: tuple[int, ...], what: str) -> None:
    _need(len(s) in ranks, f"needs {what}, got a sample of shape {list(s)}")


def _conv_out(size: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    span = size + 2 * p - d * (k - 1) - 1
    n = (-(-span // s) if ceil else span // s) + 1
    if ceil and (n - 1) * s >= size + p:  # torch: the last window must start inside the input
        n -= 1
    _need(n >= 1, f"a window of {k} (stride {s}, padding {p}) does not fit an input of {size}")
    return n


def _spatial(spec: dict, s: Shape, dilation: bool = True, ceil: bool = False, pool: bool = False) -> tuple[int, int]:
    _rank(s, (3,), "(channels, height, width)")
    k, p = _pair(spec["kernel_size"]), _pair(spec["padding"])
    st = _pair(spec["stride"]) if spec.get("stride") is not None else k
    d = _pair(spec["dilation"]) if dilation else (1, 1)
    if pool:  # torch's pooling rule; a convolution may pad as much as it likes
        _need(all(2 * pi <= ki for pi, ki in zip(p, k, strict=True)), "padding must be at most half the kernel_size")
    return tuple(_conv_out(s[1 + i], k[i], st[i], p[i], d[i], ceil) for i in range(2))  # type: ignore[return-value]


def _conv_fan_in(spec: dict) -> int:
    """Weights per output value of a convolution."""
    return spec["in_channels"] // spec["groups"] * math.prod(_pair(spec["kernel_size"]))


def _flatten(spec: dict, s: Shape) -> Shape:
    n = len(s) + 1  # with the batch dimension, as torch counts
    start = spec["start_dim"] % n if -n <= spec["start_dim"] < n else None
    end = spec["end_dim"] % n if -n <= spec["end_dim"] < n else None
    _need(start is not None and end is not None, f"dims out of range for a {n}-dimensional input")
    _need(1 <= start <= end, "start_dim must be >= 1 (the batch stays) and <= end_dim")
    return s[: start - 1] + (math.prod(s[start - 1 : end]),) + s[end:]


def _attention_params(spec: dict) -> int:
    d, h = spec["d_model"], spec["d_model"] * spec["mlp_ratio"]
    return 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * h + h) + (h * d + d)


def _attention_flops(spec: dict, s: Shape, o: Shape) -> int:
    t, d, h = s[0], spec["d_model"], spec["d_model"] * spec["mlp_ratio"]
    matmuls = 2 * t * (3 * d * d + d * d + 2 * d * h)  # qkv, out projection, the MLP
    attention = 2 * 2 * t * t * d  # q @ k^T and the weighted sum of v (the causal mask computes them all)
    return matmuls + attention + 2 * 5 * t * d  # two layer norms


def _bn_infer(rank: tuple[int, ...], what: str) -> Callable[[dict, Shape], dict]:
    def infer(spec: dict, s: Shape) -> dict:
        _rank(s, rank, what)
        return {"num_features": s[0]}

    return infer


_NORM_ARGS = {"eps": Arg("float", 1e-5, 1e-12, 1.0), "momentum": Arg("float", 0.1, 0.0, 1.0),
              "affine": Arg("bool", True), "track_running_stats": Arg("bool", True)}  # fmt: skip
_POOL = {"kernel_size": Arg("pair", low=1, high=1024), "stride": Arg("pair", None, 1, 1024),
         "padding": Arg("pair", 0, 0, 512)}  # fmt: skip

KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind(
            "linear", "y = x W^T + b over the last dimension",
            {"in_features": Arg("int", low=1, inferred=True), "out_features": Arg("int", low=1),
             "bias": Arg("bool", True)},
            infer=lambda spec, s: (_rank(s, (1, 2, 3, 4), "a last dimension"), {"in_features": s[-1]})[1],
            out=lambda spec, s: s[:-1] + (spec["out_features"],),
            params=lambda spec: spec["in_features"] * spec["out_features"] + spec["out_features"] * spec["bias"],
            flops=lambda spec, s, o: (2 * spec["in_features"] + spec["bias"]) * math.prod(o),
        ),
        Kind(
            "conv2d", "2-D convolution over (channels, height, width)",
            {"in_channels": Arg("int", low=1, inferred=True), "out_channels": Arg("int", low=1),
             "kernel_size": Arg("pair", low=1, high=1024), "stride": Arg("pair", 1, 1, 1024),
             "padding": Arg("pair", 0, 0, 1024), "dilation": Arg("pair", 1, 1, 1024),
             "groups": Arg("int", 1, 1, 1 << 16), "bias": Arg("bool", True)},
            infer=lambda spec, s: (_rank(s, (3,), "(channels, height, width)"), {"in_channels": s[0]})[1],
            out=lambda spec, s: (
                _need(spec["in_channels"] % spec["groups"] == 0 and spec["out_channels"] % spec["groups"] == 0,
                      "in_channels and out_channels must be multiples of groups"),
                (spec["out_channels"], *_spatial(spec, s)),
            )[1],
            params=lambda spec: spec["out_channels"] * _conv_fan_in(spec) + spec["out_channels"] * spec["bias"],
            flops=lambda spec, s, o: (2 * _conv_fan_in(spec) + spec["bias"]) * math.prod(o),
        ),
        Kind(
            "maxpool2d", "the largest value of each window",
            {**_POOL, "dilation": Arg("pair", 1, 1, 1024), "ceil_mode": Arg("bool", False)},
            out=lambda spec, s: (s[0], *_spatial(spec, s, ceil=spec["ceil_mode"], pool=True)),
        ),
        Kind(
            "avgpool2d", "the mean of each window",
            {**_POOL, "ceil_mode": Arg("bool", False), "count_include_pad": Arg("bool", True)},
            out=lambda spec, s: (s[0], *_spatial(spec, s, dilation=False, ceil=spec["ceil_mode"], pool=True)),
            flops=lambda spec, s, o: math.prod(s),
        ),
        Kind(
            "adaptiveavgpool2d", "the mean over windows that cut the input into output_size cells",
            {"output_size": Arg("pair", low=1, high=1 << 16)},
            out=lambda spec, s: (_rank(s, (3,), "(channels, height, width)"), (s[0], *_pair(spec["output_size"])))[1],
            flops=lambda spec, s, o: math.prod(s),
        ),
        Kind(
            "flatten", "dimensions start_dim..end_dim into one (dims count the batch, as in torch)",
            {"start_dim": Arg("int", 1, -8, 8), "end_dim": Arg("int", -1, -8, 8)},
            out=_flatten,
        ),
        Kind("relu", "max(x, 0)"),
        Kind("gelu", "x * Phi(x)", {"approximate": Arg("choice", "none", choices=("none", "tanh"))}),
        Kind("tanh", "tanh(x)"),
        Kind("dropout", "zeroes each value with probability p in training (masks seeded, see engine/model.py)",
             {"p": Arg("float", 0.5, 0.0, 0.99)}),
        Kind(
            "batchnorm1d", "normalize each feature (channel) over the micro-batch", {
                "num_features": Arg("int", low=1, inferred=True), **_NORM_ARGS},
            infer=_bn_infer((1, 2), "(features,) or (channels, length)"),
            params=lambda spec: 2 * spec["num_features"] * spec["affine"],
            flops=lambda spec, s, o: 5 * math.prod(s),
        ),
        Kind(
            "batchnorm2d", "normalize each channel over the micro-batch and the image", {
                "num_features": Arg("int", low=1, inferred=True), **_NORM_ARGS},
            infer=_bn_infer((3,), "(channels, height, width)"),
            params=lambda spec: 2 * spec["num_features"] * spec["affine"],
            flops=lambda spec, s, o: 5 * math.prod(s),
        ),
        Kind(
            "layernorm", "normalize over the trailing normalized_shape dimensions of each sample", {
                "normalized_shape": Arg("shape", low=1, inferred=True), "eps": Arg("float", 1e-5, 1e-12, 1.0),
                "elementwise_affine": Arg("bool", True), "bias": Arg("bool", True)},
            # Given, it says how many trailing dimensions to normalize over; left out, the last one.
            infer=lambda spec, s: {"normalized_shape": list(s[-len(spec.get("normalized_shape", [0])):])},
            out=lambda spec, s: (
                _need(tuple(s[len(s) - len(spec["normalized_shape"]):]) == tuple(spec["normalized_shape"]),
                      f"normalized_shape {spec['normalized_shape']} does not end the input shape {list(s)}"), s)[1],
            params=lambda spec: math.prod(spec["normalized_shape"])
            * (spec["elementwise_affine"] + (spec["elementwise_affine"] and spec["bias"])),
            flops=lambda spec, s, o: 5 * math.prod(s),
        ),
        Kind(
            "embedding", "a learned vector for each token id",
            {"num_embeddings": Arg("int", low=1), "embedding_dim": Arg("int", low=1)},
            out=lambda spec, s: s + (spec["embedding_dim"],),
            params=lambda spec: spec["num_embeddings"] * spec["embedding_dim"],
            takes_ids=True,
        ),
        Kind(
            "positional_embedding", "a learned vector for each position, added to the input (T, embedding_dim)",
            {"num_positions": Arg("int", low=1), "embedding_dim": Arg("int", low=1, inferred=True)},
            infer=lambda spec, s: (_rank(s, (2,), "(positions, embedding_dim)"), {"embedding_dim": s[-1]})[1],
            out=lambda spec, s: (_need(s[0] <= spec["num_positions"],
                                       f"{s[0]} positions in, num_positions is {spec['num_positions']}"), s)[1],
            params=lambda spec: spec["num_positions"] * spec["embedding_dim"],
            flops=lambda spec, s, o: math.prod(s),
        ),
        Kind(
            "transformer_block", "pre-LayerNorm causal self-attention, then an MLP, each with a residual",
            {"d_model": Arg("int", low=1, inferred=True), "n_heads": Arg("int", low=1, high=1024),
             "mlp_ratio": Arg("int", 4, 1, 64), "dropout": Arg("float", 0.0, 0.0, 0.99)},
            infer=lambda spec, s: (_rank(s, (2,), "(positions, d_model)"), {"d_model": s[-1]})[1],
            out=lambda spec, s: (_need(spec["d_model"] % spec["n_heads"] == 0,
                                       f"d_model {spec['d_model']} is not a multiple of n_heads {spec['n_heads']}"),
                                 s)[1],
            params=_attention_params,
            flops=_attention_flops,
        ),
    )
}  # fmt: skip


# ------------------------------------------------------------------ parsing
def _value(where: str, arg: Arg, v: Any) -> Any:
    if arg.type == "bool":
        if not isinstance(v, bool):
            raise ConfigError(where, f"must be true or false, got {v!r}")
        return v
    if arg.type == "choice":
        if v not in arg.choices:
            raise ConfigError(where, f"must be one of {', '.join(arg.choices)}, got {v!r}")
        return v
    if arg.type == "float":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not arg.low <= v <= arg.high:
            raise ConfigError(where, f"must be a number between {arg.low} and {arg.high}, got {v!r}")
        return float(v)
    items = v if isinstance(v, list) and arg.type in ("pair", "shape") else [v]
    if arg.type == "pair" and isinstance(v, list) and len(v) != 2:
        raise ConfigError(where, f"must be an integer or a list of 2 integers, got {v!r}")
    if arg.type == "shape" and not 1 <= len(items) <= 4:
        raise ConfigError(where, f"must be an integer or a list of 1 to 4 integers, got {v!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not arg.low <= item <= arg.high:
            raise ConfigError(where, f"must be an integer between {arg.low:g} and {arg.high:g}, got {v!r}")
    return list(items) if arg.type == "shape" else v


def check_spec(where: str, raw: Any) -> dict:
    """The layer object's own rules (its type, known fields, each value's type and range):
    everything that does not depend on the shape reaching it."""
    if not isinstance(raw, dict):
        raise ConfigError(where, f"must be an object with a 'type', got {type(raw).__name__}")
    kind = KINDS.get(raw.get("type"))
    if kind is None:
        raise ConfigError(f"{where}.type", f"unknown layer type {raw.get('type')!r} (known: {', '.join(KINDS)})")
    unknown = sorted(set(raw) - set(kind.args) - {"type"})
    if unknown:
        allowed = ", ".join(kind.args) or "none"
        raise ConfigError(f"{where}.{unknown[0]}", f"not a field of {kind.name} (its fields: {allowed})")
    spec = {"type": kind.name}
    for name, arg in kind.args.items():
        if name in raw:
            spec[name] = (
                raw[name] if raw[name] is None and arg.default is None else _value(f"{where}.{name}", arg, raw[name])
            )
        elif arg.default is _REQUIRED and not arg.inferred:
            raise ConfigError(f"{where}.{name}", f"is required for {kind.name}")
        elif not arg.inferred:
            spec[name] = arg.default
    return spec


def resolve(specs: list[dict], sample: SampleShape, where: str = "model_config.layers") -> list[Layer]:
    """Walk the layers from the sample shape: fill the inferred fields, check the given ones,
    and compute each layer's output shape, parameters and FLOPs."""
    layers, shape = [], sample
    for i, raw in enumerate(specs):
        here = f"{where}[{i}]"
        spec = check_spec(here, raw)
        kind = KINDS[spec["type"]]
        if kind.takes_ids != shape.ids:
            want = "token ids (integers)" if kind.takes_ids else "float values"
            got = "token ids" if shape.ids else "float values"
            reach = f"{got} of shape {list(shape.shape)} reach it"
            raise ConfigError(f"{here}.type", f"{kind.name} takes {want}, but {reach}")
        try:
            inferred = kind.infer(spec, shape.shape)
        except ValueError as e:
            raise ConfigError(here, f"{kind.name} {e}") from None
        for name, value in inferred.items():
            if name in spec and spec[name] != value:
                raise ConfigError(
                    f"{here}.{name}", f"is {spec[name]}, but the input reaching it gives {value} "
                    f"(input shape {list(shape.shape)}); leave it out to infer it"
                )  # fmt: skip
            spec[name] = value
        try:
            out = tuple(kind.out(spec, shape.shape))
        except ValueError as e:
            raise ConfigError(here, f"{kind.name}: {e}") from None
        layers.append(Layer(i, spec, shape, SampleShape(out), kind.params(spec), kind.flops(spec, shape.shape, out)))
        shape = SampleShape(out)
    return layers


def train_flops_per_sample(layers: Sequence[Layer], start: int, end: int) -> int:
    """FLOPs a training sample costs layers ``[start, end)``: the forward, the weight gradient of
    a layer with parameters (as much again), and the input gradient (as much again) wherever a
    layer before it has parameters (the data itself needs none)."""
    total = 0
    for layer in layers[start:end]:
        needs_input_grad = any(before.params > 0 for before in layers[: layer.index])
        total += layer.flops * (1 + (layer.params > 0) + needs_input_grad)
    return total


def saved_values(layer: Layer) -> int:
    """Values per sample autograd keeps for the layer's backward, about: its input, or for a
    transformer block the ~16 (T, d_model) tensors inside it and its attention weights."""
    if layer.type == "transformer_block":
        t, d = layer.input.shape
        return 16 * t * d + layer.spec["n_heads"] * t * t
    return layer.input.numel
