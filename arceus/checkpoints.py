"""Checkpoints: every stage's part of one training step, kept on the API's machine.

Layout under the store's root (``Settings.checkpoint_dir``, ``$ARCEUS_HOME/checkpoints``)::

    <job>/<step>/stage-<i>.safetensors   one per stage: its weights and optimizer state
    <job>/<step>/manifest.json           written last: a directory without it is no checkpoint

Tensors are named as in ``build_model(...)``'s ``state_dict`` (``"3.weight"``); a parameter's
optimizer state as ``optimizer/<parameter>/<state>`` (``optimizer/3.weight/exp_avg``). So a
checkpoint can be split again over any number of stages (``slice``) and merged into one
model file (``model``), both by copying bytes (``arceus.tensorfile``): no torch, no pickle.

How parts get here: a stage puts its part into Redis (``arceus.blobs``) and says so on the
run's event stream; whoever follows the run (``arceus train``'s launcher, or the API's
supervisor) hands those events to a ``CheckpointCollector``, which writes each part and
commits the checkpoint once every stage's part is in. Tensors never travel through Celery.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

import redis

from .blobs import get_blob
from .errors import ArceusError, ConfigError, NotFound
from .plan.runspec import RunSpec
from .tensorfile import Combined, TensorFile, combine, fsync_dir, write_atomic

__all__ = ["FORMAT", "MODEL_FORMAT", "OPTIMIZER", "CheckpointCollector", "CheckpointStore", "layer_of"]

log = logging.getLogger(__name__)

FORMAT = "arceus-checkpoint/1"
MODEL_FORMAT = "arceus-model/1"
OPTIMIZER = "optimizer/"
MANIFEST = "manifest.json"
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def layer_of(name: str) -> int:
    """The model layer a tensor belongs to: ``"3.weight"`` and ``"optimizer/3.weight/exp_avg"`` -> 3."""
    return int(name.removeprefix(OPTIMIZER).split(".", 1)[0])


def _part_file(stage: int) -> str:
    return f"stage-{stage}.safetensors"


class CheckpointStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _job_dir(self, job_id: str) -> Path:
        if not _JOB_ID.fullmatch(job_id):  # it names a directory: nothing that could leave the store
            raise ConfigError("job_id", f"{job_id!r} is not a job id")
        return self.root / job_id

    def step_dir(self, job_id: str, step: int) -> Path:
        return self._job_dir(job_id) / str(int(step))

    # ----------------------------------------------------------------- writing
    def write_part(self, job_id: str, step: int, stage: int, data: bytes) -> Path:
        folder = self.step_dir(job_id, step)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / _part_file(stage)
        # A part written again (a checkpoint being replaced) unmakes the checkpoint until it is
        # committed again: no manifest ever names a mix of two trainings' parts.
        (folder / MANIFEST).unlink(missing_ok=True)
        write_atomic(path, data, check=TensorFile.read)  # a malformed part never replaces a file
        return path

    def has_part(self, job_id: str, step: int, stage: int) -> bool:
        return (self.step_dir(job_id, step) / _part_file(stage)).is_file()

    def commit(self, job_id: str, step: int, manifest: dict) -> None:
        """Write the manifest, making the checkpoint count: only once every part it lists is on disk."""
        folder = self.step_dir(job_id, step)
        missing = [p["file"] for p in manifest["parts"] if not (folder / p["file"]).is_file()]
        if missing:
            raise ArceusError(f"checkpoint {step} of job {job_id} is missing {', '.join(missing)}")
        write_atomic(folder / MANIFEST, json.dumps(manifest, indent=1).encode())

    def prune(self, job_id: str, keep: int) -> list[int]:
        """Keep the latest ``keep`` checkpoints; also drop unfinished ones older than the latest."""
        steps = self.steps(job_id)
        dropped = steps[:-keep] if keep > 0 else []
        latest = steps[-1] if steps else None
        for folder in self._folders(job_id):
            step = int(folder.name)
            unfinished = not (folder / MANIFEST).is_file() and latest is not None and step < latest
            if step in dropped or unfinished:
                self._remove(folder)
        return dropped

    def drop_after(self, job_id: str, step: int) -> list[int]:
        """Remove the checkpoints (finished or not) past ``step``: a job initialized again from
        ``step`` (0: fresh weights) trains a different future, and must not find the old one."""
        gone = sorted(int(f.name) for f in self._folders(job_id) if int(f.name) > step)
        for s in gone:
            self._remove(self.step_dir(job_id, s))
        return gone

    @staticmethod
    def _remove(folder: Path) -> None:
        # The manifest first: a crash midway leaves an unfinished checkpoint, never one that lies.
        (folder / MANIFEST).unlink(missing_ok=True)
        fsync_dir(folder)
        shutil.rmtree(folder, ignore_errors=True)

    def delete(self, job_id: str) -> None:
        shutil.rmtree(self._job_dir(job_id), ignore_errors=True)

    # ----------------------------------------------------------------- reading
    def _folders(self, job_id: str) -> list[Path]:
        folder = self._job_dir(job_id)
        if not folder.is_dir():
            return []
        return [p for p in folder.iterdir() if p.is_dir() and p.name.isdigit()]

    def steps(self, job_id: str) -> list[int]:
        """The steps of the job's complete checkpoints, oldest first."""
        return sorted(int(p.name) for p in self._folders(job_id) if (p / MANIFEST).is_file())

    def manifest(self, job_id: str, step: int | str = "latest") -> dict:
        steps = self.steps(job_id)
        if not steps:
            raise NotFound(f"job {job_id} has no checkpoint yet: one is saved at the end of every epoch of training")
        if step == "latest":
            step = steps[-1]
        elif not isinstance(step, int) and not (isinstance(step, str) and step.isdigit()):
            raise ConfigError("checkpoint", f"must be 'latest' or a step number, got {step!r}")
        if int(step) not in steps:
            raise NotFound(f"job {job_id} has no checkpoint at step {step} (it has: {', '.join(map(str, steps))})")
        return json.loads((self.step_dir(job_id, int(step)) / MANIFEST).read_text())

    def summaries(self, job_id: str) -> list[dict]:
        """Each checkpoint's step, position and metrics, oldest first (what the API lists)."""
        out = []
        for step in self.steps(job_id):
            try:
                m = self.manifest(job_id, step)
            except (ArceusError, OSError, ValueError):  # pruned while we looked
                continue
            out.append({k: m[k] for k in ("step", "epoch", "batch", "metrics", "created_at")})
        return out

    def _parts(self, manifest: dict) -> list[TensorFile]:
        folder = self.step_dir(manifest["job_id"], manifest["step"])
        return [TensorFile.read(folder / p["file"]) for p in manifest["parts"]]

    def model(self, job_id: str, step: int | str = "latest") -> tuple[dict, Combined]:
        """The whole model of a checkpoint as one safetensors file (weights only), whose metadata
        holds what ``arceus.load_model`` needs to rebuild it, the step and the metrics."""
        m = self.manifest(job_id, step)
        metadata = {
            "format": MODEL_FORMAT,
            "model_config": json.dumps(m["model_config"]),
            "sample_shape": json.dumps(m["sample"]["shape"]),
            "sample_ids": json.dumps(m["sample"]["ids"]),
            "job_id": job_id,
            "step": str(m["step"]),
            "metrics": json.dumps(m["metrics"]),
        }
        return m, combine(self._parts(m), lambda name: not name.startswith(OPTIMIZER), metadata)

    def slice(self, job_id: str, step: int, start: int, end: int) -> bytes:
        """Weights and optimizer state of layers ``[start, end)``: what a stage of a new split loads."""
        m = self.manifest(job_id, step)
        return combine(self._parts(m), lambda name: start <= layer_of(name) < end, {"step": str(step)}).to_bytes()


class CheckpointCollector:
    """Follows one run's events: writes every stage's checkpoint part to ``store`` as it
    arrives, and commits a checkpoint once all stages' parts of its step are in."""

    def __init__(self, r: redis.Redis, store: CheckpointStore, spec: RunSpec) -> None:
        self.r, self.store, self.spec = r, store, spec
        self.parts: dict[int, set[int]] = {}
        self.positions: dict[int, tuple[int, int, int]] = {}
        self.metrics: dict = {}
        self.committed: list[int] = []

    def handle(self, ev: dict) -> int | None:
        """Take one event of the run; returns the step of a checkpoint it completed."""
        if ev["type"] == "epoch":
            self.metrics = {k: v for k, v in ev.items() if k not in ("type", "time")}
            return None
        if ev["type"] != "checkpoint_part":
            return None
        step, stage = int(ev["step"]), int(ev["stage"])
        key = self.spec.keys.checkpoint_part(step, stage)
        data = get_blob(self.r, key)
        if data is not None:
            self.store.write_part(self.spec.job_id, step, stage, data)
            self.r.delete(key)
        elif not self.store.has_part(self.spec.job_id, step, stage):
            # Read again after a restart, and pruned since; or another follower (a second API
            # process) took it, or it expired: not this one's to commit.
            steps = self.store.steps(self.spec.job_id)
            if not steps or step > steps[-1]:
                log.warning(
                    "job %s: stage %d's part of checkpoint %d is gone from Redis", self.spec.job_id, stage, step
                )
            return None
        self.parts.setdefault(step, set()).add(stage)
        self.positions[step] = (int(ev["epoch"]), int(ev["batch"]), int(ev["end_epoch"]))
        if len(self.parts[step]) < self.spec.num_stages:
            return None
        self._commit(step)
        return step

    def _commit(self, step: int) -> None:
        spec, job = self.spec, self.spec.job
        epoch, batch, end_epoch = self.positions.pop(step)
        sample = job.dataset.sample
        manifest = {
            "format": FORMAT,
            "job_id": spec.job_id,
            "run_id": spec.run_id,
            "step": step,
            "epoch": epoch,  # the position training continues from: this epoch's batch ``batch``
            "batch": batch,
            "end_epoch": end_epoch,  # the epoch its run was to end before (what a recovery finishes)
            "created_at": time.time(),
            **job.to_dict(),
            "sample": {"shape": list(sample.shape), "ids": sample.ids},
            "train_config": spec.train.to_dict(),
            "metrics": self.metrics,
            "parts": [
                {"stage": s.stage, "layers": [s.start_layer, s.end_layer], "file": _part_file(s.stage)}
                for s in spec.stages
            ],  # fmt: skip
        }
        self.store.commit(spec.job_id, step, manifest)
        del self.parts[step]
        self.committed.append(step)
        self.store.prune(spec.job_id, spec.train.keep_checkpoints)
        log.info("job %s: checkpoint at step %d", spec.job_id, step)
