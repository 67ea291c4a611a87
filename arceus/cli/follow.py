"""Follow a job through its live feed (``GET /api/jobs/<id>/events``): a progress bar per epoch
with steps/s and ETA (tqdm, on a terminal only), a line per epoch and per state change."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from ..control.client import ApiClient

__all__ = ["epoch_line", "follow"]


def epoch_line(e: dict) -> str:
    rate = (f"{e['val_bits_per_byte']:.3f} bits/byte | {e['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in e
            else f"{e['samples_per_s']:,.0f} samples/s")  # fmt: skip
    return (f"epoch {e['epoch']:>3}/{e['epochs']}  train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.4f}"
            f"  |  val loss {e['val_loss']:.4f} acc {e['val_accuracy']:.4f}  |  {rate}")  # fmt: skip


def follow(client: ApiClient, job_id: str, run_id: str | None = None, out: TextIO | None = None) -> dict:
    """Print the job's story until it completes, fails or stops; return the job as it ends.
    With ``run_id``, what came before that run started is skipped (the feed replays it)."""
    out = out or sys.stdout
    tty = out.isatty()
    live = run_id is None
    bar: tqdm | None = None

    def close() -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None

    for ev in client.events(f"/api/jobs/{job_id}/events"):
        kind = ev["type"]
        if not live:
            live = kind == "state" and ev.get("run_id") == run_id
            if not live:
                continue
        if kind == "progress" and tty:
            desc = f"epoch {ev['epoch']}"
            if bar is None or bar.desc != desc:
                close()
                bar = tqdm(total=ev["steps"], desc=desc, unit="step", file=out, leave=False, dynamic_ncols=True)
            bar.update(ev["step"] - bar.n)
            bar.set_postfix_str(f"loss {ev['loss']:.4f} acc {ev['accuracy']:.3f}")
        elif kind == "epoch":
            close()
            print(epoch_line(ev), file=out, flush=True)
        elif kind == "state":
            close()
            reason = f": {ev['error']}" if ev.get("error") else ""
            print(f"job {job_id} {ev['status']}{reason}", file=out, flush=True)
        elif kind == "error":
            close()
            print(f"stage {ev.get('stage')}: {ev.get('reason')}", file=out, flush=True)
    close()
    return client.get(f"/api/jobs/{job_id}")
