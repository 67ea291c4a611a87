"""Pipeline schedules as data: a pure function gives each stage its list of actions for one step.

``F i`` runs the forward of micro-batch ``i`` (receiving its input from the previous
stage unless this is stage 0, sending the output on unless this is the last stage);
``B i`` runs its backward (the last stage starts from the loss); ``STEP`` applies the
accumulated gradients. The stage runner executes the list; tests check it without
starting a process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["SCHEDULES", "Action", "gpipe", "in_flight", "one_f_one_b"]


@dataclass(frozen=True)
class Action:
    op: str  # "F", "B" or "STEP"
    mb: int = -1

    def __str__(self) -> str:
        return self.op if self.op == "STEP" else f"{self.op}{self.mb}"


def _check(stage: int, num_stages: int, num_microbatches: int) -> None:
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage {stage} is out of range of {num_stages} stages")
    if num_microbatches < 1:
        raise ValueError(f"need at least one micro-batch, got {num_microbatches}")


def gpipe(stage: int, num_stages: int, num_microbatches: int) -> list[Action]:
    """GPipe: all forwards, then all backwards in the same order, then one optimizer step.
    A stage holds the activations of all M micro-batches at once."""
    _check(stage, num_stages, num_microbatches)
    return (
        [Action("F", i) for i in range(num_microbatches)]
        + [Action("B", i) for i in range(num_microbatches)]
        + [Action("STEP")]
    )


def one_f_one_b(stage: int, num_stages: int, num_microbatches: int) -> list[Action]:
    """1F1B: a warm-up of forwards (fewer the later the stage), then alternate one forward
    and one backward, then the remaining backwards, then one optimizer step.

    Stage ``s`` holds at most ``min(D - s, M)`` micro-batches' activations instead of M.
    Backwards run in micro-batch order, as in GPipe, so gradients accumulate in the same
    order and both schedules give the same weights.
    """
    _check(stage, num_stages, num_microbatches)
    m = num_microbatches
    warmup = min(num_stages - 1 - stage, m)
    actions = [Action("F", i) for i in range(warmup)]
    for i in range(m - warmup):
        actions += [Action("F", warmup + i), Action("B", i)]
    actions += [Action("B", i) for i in range(m - warmup, m)]
    return actions + [Action("STEP")]


def in_flight(actions: list[Action]) -> int:
    """The most micro-batches whose forward has run and whose backward has not, at any point."""
    peak = live = 0
    for a in actions:
        live += {"F": 1, "B": -1}.get(a.op, 0)
        peak = max(peak, live)
    return peak


SCHEDULES: dict[str, Callable[[int, int, int], list[Action]]] = {"gpipe": gpipe, "1f1b": one_f_one_b}
