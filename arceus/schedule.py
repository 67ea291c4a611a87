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

__all__ = ["SCHEDULES", "Action", "gpipe"]


@dataclass(frozen=True)
class Action:
    op: str  # "F", "B" or "STEP"
    mb: int = -1

    def __str__(self) -> str:
        return self.op if self.op == "STEP" else f"{self.op}{self.mb}"


def gpipe(stage: int, num_stages: int, num_microbatches: int) -> list[Action]:
    """GPipe: all forwards, then all backwards in the same order, then one optimizer step."""
    if not 0 <= stage < num_stages:
        raise ValueError(f"stage {stage} is out of range of {num_stages} stages")
    if num_microbatches < 1:
        raise ValueError(f"need at least one micro-batch, got {num_microbatches}")
    return (
        [Action("F", i) for i in range(num_microbatches)]
        + [Action("B", i) for i in range(num_microbatches)]
        + [Action("STEP")]
    )


SCHEDULES: dict[str, Callable[[int, int, int], list[Action]]] = {"gpipe": gpipe}
