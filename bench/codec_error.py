"""Error of candidate 8-bit wire schemes on real activations and gradients of the seed model.

    python -m bench.codec_error [--dataset digits] [--epochs 5]

Trains the seed model (784-128-64-10) in one process, captures the tensors that cross
stage boundaries (outputs of layers 0 and 1, and the loss gradients w.r.t. them) on a
batch of 256, and prints each scheme's relative RMS error and bytes per value.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from arceus.config import DatasetConfig, ModelConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.reference import train_reference
from arceus.settings import Settings
from arceus.wire.codecs import BlockInt8, Fp16


def rel_rms(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).norm() / x.norm().clamp_min(1e-30))


def per_tensor(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().max() / 127
    return (x / s).round() * s


def per_row(x: torch.Tensor) -> torch.Tensor:
    s = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-30) / 127
    return (x / s).round() * s


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--dataset", default="digits")
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(DatasetConfig(name=args.dataset), Settings.from_env().data_dir)
    model, _ = train_reference(ModelConfig((784, 128, 64, 10)), data, TrainConfig(epochs=args.epochs), 256, 1000)
    x, y = data.train_x[:256], data.train_y[:256]
    layers = list(model.layers.values())
    acts, h = [], x
    for layer in layers[:-1]:
        h = layer(h).detach().requires_grad_()
        acts.append(h)
    out = acts[-1]
    logits = layers[-1](out)
    # Gradients w.r.t. each boundary activation, as the pipeline sends them backward.
    h1 = layers[1](acts[0])
    loss = F.cross_entropy(layers[2](h1), y)
    grads = torch.autograd.grad(loss, [acts[0], h1])
    del logits
    tensors = {
        "act 0->1 (256x128)": acts[0].detach(),
        "act 1->2 (256x64)": acts[1].detach(),
        "grad 1->0 (256x128)": grads[0],
        "grad 2->1 (256x64)": grads[1],
    }
    schemes = {
        "fp16": lambda t: Fp16().decode(memoryview(Fp16().encode(t.reshape(-1))), t.numel(), t.dtype).view(t.shape),
        "int8 per-tensor absmax": per_tensor,
        "int8 per-row absmax": per_row,
    }
    for block in (32, 64, 128):
        for asym in (False, True):
            c = BlockInt8(block, asym)
            name = f"int8 block{block} {'min-max' if asym else 'absmax'}"
            schemes[name] = lambda t, c=c: c.decode(memoryview(c.encode(t.reshape(-1))), t.numel(), t.dtype).view(
                t.shape
            )
    rows = []
    for sname, f in schemes.items():
        errs = {tname: rel_rms(t, f(t)) for tname, t in tensors.items()}
        rows.append({"scheme": sname, **errs})
    print(json.dumps(rows, indent=1))
    print(f"{'scheme':28s}" + "".join(f"{k:>22s}" for k in tensors))
    for r in rows:
        print(f"{r['scheme']:28s}" + "".join(f"{r[k] * 100:21.3f}%" for k in tensors))


if __name__ == "__main__":
    main()
