"""What every stage of one training run is told: plain JSON-able data (no torch here).

The local cluster passes it to each stage process; the control plane will pass the
same dict as a task argument. Stages derive their Redis keys from it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from .config import JobConfig, TrainConfig
from .partition import StageShard, plan

__all__ = ["RunSpec", "run_prefix"]


def run_prefix(job_id: str, run_id: str) -> str:
    """Namespace of every key of one run: a restarted run never reads an earlier run's entries."""
    return f"arceus:job:{job_id}:run:{run_id}"


@dataclass(frozen=True)
class RunSpec:
    job_id: str
    run_id: str
    job: JobConfig
    train: TrainConfig
    stages: tuple[StageShard, ...]
    # Torch device per stage ("cpu", "cuda:0", "mps"); None picks mps > cuda > cpu.
    devices: tuple[str | None, ...] = field(default=())

    @classmethod
    def new(
        cls, job: JobConfig, train: TrainConfig, num_stages: int, job_id: str | None = None, device: str | None = None
    ) -> RunSpec:
        stages = tuple(plan(job.model.num_layers, num_stages))
        return cls(
            job_id=job_id or uuid.uuid4().hex[:12],
            run_id=uuid.uuid4().hex[:12],
            job=job,
            train=train,
            stages=stages,
            devices=(device,) * num_stages,
        )

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def prefix(self) -> str:
        return run_prefix(self.job_id, self.run_id)

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
        }

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(
            job_id=str(d["job_id"]),
            run_id=str(d["run_id"]),
            job=JobConfig.parse({"model_config": d["model_config"], "dataset_config": d["dataset_config"]}),
            train=TrainConfig.parse(d["train_config"]),
            stages=tuple(StageShard.from_dict(s) for s in d["stages"]),
            devices=tuple(d.get("devices", ())),
        )
