"""A stage's state as tensors: what it saves in a checkpoint, loads to resume, and exports.

Names are the unsplit model's (``Shard`` names its layers by their index in the whole
model); a parameter's optimizer state is ``optimizer/<parameter>/<state>`` (see
``arceus.checkpoints``). Bytes are safetensors: loading them never unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path

import redis
import torch
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from .. import keys
from ..blobs import get_blob
from ..checkpoints import MODEL_FORMAT, OPTIMIZER
from ..config import MAX_PARAMS, ModelConfig
from ..errors import ConfigError
from ..plan.layers import SampleShape, resolve
from .model import Shard

__all__ = ["encode_part", "load_model", "load_part", "load_optimizer_state", "load_restore", "optimizer_state"]


def optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state (SGD's momentum buffers; AdamW's moments and step
    count), named ``optimizer/<parameter>/<state>``, on the CPU."""
    out = {}
    for name, p in model.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            out[f"{OPTIMIZER}{name}/{key}"] = t.detach().to("cpu", copy=True).contiguous()
    return out


def load_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Give ``opt`` the state ``optimizer_state`` returned, parameter by parameter (by name, so
    it follows each parameter to whichever stage holds it now)."""
    params = dict(model.named_parameters())
    by_param: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        name, _, state = key.removeprefix(OPTIMIZER).rpartition("/")
        if name not in params:
            raise ConfigError("checkpoint", f"optimizer state for {name!r}, which this stage does not hold")
        by_param.setdefault(name, {})[state] = value
    for name, states in by_param.items():
        p = params[name]
        # A step count stays on the CPU, as torch keeps it; buffers go where their parameter is.
        opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in states.items()}


def encode_part(model: Shard, opt: torch.optim.Optimizer, metadata: dict[str, str]) -> bytes:
    """A stage's checkpoint part: its weights and buffers, and its optimizer state."""
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    tensors.update(optimizer_state(model, opt))
    return save_bytes(tensors, metadata=metadata)


def load_part(model: Shard, data: bytes) -> dict[str, torch.Tensor]:
    """Load a checkpoint slice's weights into ``model``; returns its optimizer state (for
    ``load_optimizer_state`` once the run's optimizer exists)."""
    tensors = load_bytes(data)
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:  # names the missing and unexpected keys, or the shapes that differ
        reason = " ".join(str(e).split())
        raise ConfigError("checkpoint", f"does not fit layers [{model.start}, {model.end}): {reason}") from None
    return {k: v for k, v in tensors.items() if k.startswith(OPTIMIZER)}


def load_restore(r: redis.Redis, job_id: str, stage: int, model: Shard) -> dict[str, torch.Tensor]:
    """Load the checkpoint slice left in Redis for ``stage`` of the job (``keys.restore``) into
    ``model``; returns its optimizer state. The worker at initialize and the local launcher at
    a resume both load this way."""
    data = get_blob(r, keys.restore(job_id, stage))
    if data is None:
        raise ConfigError("checkpoint", f"no checkpoint slice for stage {stage} of job {job_id} is in Redis "
                                        f"({keys.restore(job_id, stage)}): initialize or resume again")  # fmt: skip
    return load_part(model, data)


def load_model(path: str | Path) -> torch.nn.Module:
    """The model in an exported file (``GET /api/jobs/<id>/model``, ``arceus export``), ready
    to use (in eval mode). Needs no Redis, Celery or API."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != MODEL_FORMAT:
            raise ConfigError("path", f"{path} is not an Arceus model file (its format is {meta.get('format')!r})")
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has keys(), no iteration
    try:
        config, shape, ids = (json.loads(meta[k]) for k in ("model_config", "sample_shape", "sample_ids"))
        layers = resolve(ModelConfig.parse(config).specs(), SampleShape(tuple(shape), bool(ids)))
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError("path", f"{path}: its metadata does not describe a model ({e})") from None
    # The file says what to build: check it is a model Arceus would accept before allocating it.
    params = sum(layer.params for layer in layers)
    if not 0 < params <= MAX_PARAMS:
        raise ConfigError("path", f"{path} describes a model of {params:,} parameters (at most {MAX_PARAMS:,})")
    model = Shard(layers, 0, len(layers), seed=0)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ConfigError("path", f"{path}: its tensors do not fit its model: {' '.join(str(e).split())}") from None
    return model.eval()
