"""Follow a job through its live feed (``GET /api/jobs/<id>/events``): a progress bar per epoch
with steps/s and ETA (tqdm, on a terminal only), a line per epoch and per state change."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

from ..control.client import ApiClient

__all__ = ["EventPrinter", "epoch_line", "follow"]


def epoch_line(e: dict) -> str:
    rate = (f"{e['val_bits_per_byte']:.3f} bits/byte | {e['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in e
            else f"{e['samples_per_s']:,.0f} samples/s")  # fmt: skip
    return (f"epoch {e['epoch']:>3}/{e['epochs']}  train loss {e['train_loss']:.4f} acc {e['train_accuracy']:.4f}"
            f"  |  val loss {e['val_loss']:.4f} acc {e['val_accuracy']:.4f}  |  {rate}")  # fmt: skip


class EventPrinter:
    """Prints a run's events as they come (``arceus train``'s local run and the API's feed alike):
    a tqdm bar per epoch on a terminal, a line per epoch, state change, started stage and error."""

    def __init__(self, out: TextIO | None = None, job_id: str | None = None) -> None:
        self.out, self.job_id = out or sys.stdout, job_id
        self.tty = self.out.isatty()
        self.bar: tqdm | None = None

    def __call__(self, ev: dict) -> None:
        kind = ev["type"]
        if kind == "progress":
            if self.tty:
                desc = f"epoch {ev['epoch']}"
                if self.bar is None or self.bar.desc != desc:
                    self.close()
                    self.bar = tqdm(total=ev["steps"], desc=desc, unit="step", file=self.out, leave=False,
                                    dynamic_ncols=True)  # fmt: skip
                self.bar.update(ev["step"] - self.bar.n)
                self.bar.set_postfix_str(f"loss {ev['loss']:.4f} acc {ev['accuracy']:.3f}")
            return
        if kind == "epoch":
            self._line(epoch_line(ev))
        elif kind == "state":
            self._line(f"job {self.job_id} {ev['status']}" + (f": {ev['error']}" if ev.get("error") else ""))
        elif kind == "stage_started":
            sends = f", sends {ev['wire']} to stage {ev['stage'] + 1}" if ev.get("wire") else ""
            self._line(f"  {ev['who']} on {ev['device']}{sends}")
        elif kind == "error":
            self._line(f"stage {ev.get('stage')}: {ev.get('reason')}")

    def _line(self, text: str) -> None:
        self.close()
        print(text, file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def follow(client: ApiClient, job_id: str, run_id: str | None = None, out: TextIO | None = None) -> dict:
    """Print the job's story until it completes, fails or stops; return the job as it ends.
    With ``run_id``, what came before that run started is skipped (the feed replays it)."""
    printer = EventPrinter(out, job_id)
    live = run_id is None
    try:
        for ev in client.events(f"/api/jobs/{job_id}/events"):
            live = live or (ev["type"] == "state" and ev.get("run_id") == run_id)
            if live:
                printer(ev)
    finally:
        printer.close()
    return client.get(f"/api/jobs/{job_id}")
