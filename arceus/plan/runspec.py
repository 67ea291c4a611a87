"""What every stage of one training run is told: plain JSON-able data (no torch here).

The engine-only launcher passes it to each stage process; the control plane passes the
same dict as a Celery task argument. Stages derive their Redis keys from it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..config import JobConfig, TrainConfig
from ..errors import ConfigError
from ..keys import RunKeys
from .partition import StageAssignment, plan
from .wires import FALLBACK

__all__ = ["RunSpec"]


@dataclass(frozen=True)
class RunSpec:
    job_id: str
    run_id: str
    job: JobConfig
    train: TrainConfig
    stages: tuple[StageAssignment, ...]
    # Torch device per stage ("cpu", "cuda:0", "mps"); None picks mps > cuda > cpu.
    devices: tuple[str | None, ...] = field(default=())
    # Steps the job has trained before this run: it starts at that point of the data order
    # (from a checkpoint, or where the job's previous run ended) and numbers steps from it.
    start_step: int = 0
    # Per stage, the Redis that holds the streams into it (its worker's data Redis, next to it),
    # or None: the run's own Redis, which always holds control, events and job state.
    data_urls: tuple[str | None, ...] = field(default=())

    @classmethod
    def new(
        cls,
        job: JobConfig,
        train: TrainConfig,
        num_stages: int,
        job_id: str | None = None,
        device: str | None = None,
        stages: Sequence[StageAssignment] = (),
        start_step: int = 0,
    ) -> RunSpec:
        """A new run of ``num_stages`` stages on the cost-balanced plan, or on ``stages`` when given."""
        stages = tuple(stages) or tuple(plan(job.layers, num_stages))
        if len(stages) != num_stages:
            raise ConfigError("stages", f"{len(stages)} stage assignments for a run of {num_stages} stages")
        return cls(
            job_id=job_id or uuid.uuid4().hex[:12],
            run_id=uuid.uuid4().hex[:12],
            job=job,
            train=train,
            stages=stages,
            devices=(device,) * num_stages,
            start_step=start_step,
        )

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def keys(self) -> RunKeys:
        return RunKeys(self.job_id, self.run_id)

    def check_message_sizes(self, max_payload_elements: int) -> None:
        """Refuse a run whose largest activation would exceed what a receiver may decode
        (the API before it enqueues the run, and every stage before it starts)."""
        rows = max(self.job.dataset.batch_size, self.job.dataset.val_batch_size)
        crossing = [self.job.layers[s.end_layer - 1].output for s in self.stages[:-1]]
        width = max((shape.numel for shape in crossing), default=0)
        if rows * width > max_payload_elements:
            raise ConfigError(
                "dataset_config.val_batch_size",
                f"a batch of {rows} rows x {width} values per sample = {rows * width} values exceeds the payload "
                f"limit of {max_payload_elements}; use smaller batches",
            )

    def wire(self, link: int) -> str:
        """The wire of link ``link`` (stage ``link`` to ``link + 1``, both ways): the run's, or with
        ``auto`` what the link measured at initialize (``plan.wires``)."""
        if self.train.wire != "auto":
            return self.train.wire
        measured = self.stages[link].link
        return measured["wire"] if measured else FALLBACK

    def data_url(self, stage: int) -> str | None:
        """Where the streams into ``stage`` live: its data Redis, or None for the run's Redis."""
        return self.data_urls[stage] if stage < len(self.data_urls) else None

    def device_for(self, stage: int) -> str | None:
        return self.devices[stage] if stage < len(self.devices) else None

    def to_dict(self) -> dict:
        return {
            "job_id": self.job_id,
            "run_id": self.run_id,
            **self.job.to_dict(),
            "train_config": self.train.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "devices": list(self.devices),
            "start_step": self.start_step,
            "data_urls": list(self.data_urls),
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(
            job_id=str(d["job_id"]),
            run_id=str(d["run_id"]),
            job=JobConfig.parse({"model_config": d["model_config"], "dataset_config": d["dataset_config"]}),
            train=TrainConfig.parse(d["train_config"]),
            stages=tuple(StageAssignment.from_dict(s) for s in d["stages"]),
            devices=tuple(d.get("devices", ())),
            start_step=int(d.get("start_step", 0)),
            data_urls=tuple(d.get("data_urls", ())),
        )
