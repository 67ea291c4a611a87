"""The engine alone: every stage in its own process on this machine, talking through Redis.

No API and no Celery (``launch.control_plane`` starts those). ``train_local`` is what
``arceus train``, the tests and the benchmarks run. It starts the stage processes,
follows the run's event stream, and fails fast (aborting the other stages) when a stage
reports an error or its process dies.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import redis
import torch

from .. import keys
from ..blobs import put_blob
from ..checkpoints import CheckpointCollector, CheckpointStore
from ..config import JobConfig, TrainConfig
from ..engine.device import pick_device
from ..engine.model import Shard, build_shard
from ..engine.probe import measure
from ..engine.stage import StageRunner
from ..engine.state import load_restore
from ..engine.streams import run_client
from ..errors import ConfigError, RunFailed
from ..events import EventLog
from ..liveness import RunLiveness, lost_redis
from ..plan import wires
from ..plan.partition import StageAssignment
from ..plan.runspec import RunSpec
from ..settings import Settings
from ..wire import decode
from .redis_server import redis_address

__all__ = ["RunResult", "read_weights", "run_stage", "train_local"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    spec: RunSpec
    epochs: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    weights: dict = field(default_factory=dict)
    checkpoints: list[int] = field(default_factory=list)  # steps of the checkpoints this run committed


def read_weights(r: redis.Redis, spec: RunSpec) -> dict[str, torch.Tensor]:
    """The final parameters all stages published, keyed as in the unsplit model's state_dict."""
    return {k.decode(): decode(v) for k, v in r.hgetall(spec.keys.weights).items()}


def run_stage(spec_dict: dict, stage: int, redis_url: str, settings: Settings) -> None:
    """Entry point of a stage process (``train_local`` starts one per stage; bench.lan too)."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    spec = RunSpec.from_dict(spec_dict)
    r = run_client(redis_url, settings.socket_timeout_s)
    try:
        try:
            model, optimizer_state = _restored(r, spec, stage) if spec.start_step else (None, None)
            runner = StageRunner(spec, stage, r, settings, model=model, optimizer_state=optimizer_state)
        except Exception as e:  # before run() reports for itself: the run's reason is this
            RunLiveness(r, spec.keys).abort(f"stage {stage}: {type(e).__name__}: {e}")
            raise
        runner.run()
    finally:
        r.close()


def _restored(r: redis.Redis, spec: RunSpec, stage: int) -> tuple[Shard, dict]:
    """The stage's layers and optimizer state from the checkpoint slice its launcher left in Redis."""
    shard = spec.stages[stage]
    model = build_shard(spec.job, shard.start_layer, shard.end_layer, spec.train.seed)
    optimizer_state = load_restore(r, spec.job_id, stage, model)
    return model.to(pick_device(spec.device_for(stage))), optimizer_state


def _with_links(spec: RunSpec, r: redis.Redis, threads: int, socket_timeout_s: float) -> RunSpec:
    """With ``wire="auto"``, each link's wire (``plan.wires``) from a probe of every stage taken
    here, as the stages will run: on this machine, with their threads, through this Redis."""
    if spec.train.wire != "auto" or spec.num_stages < 2:
        return spec
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        reports = [measure(r, spec.job_id, spec.job, s, pick_device(spec.device_for(s.stage)), spec.data_urls,
                           socket_timeout_s) for s in spec.stages]  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return replace(spec, stages=tuple(wires.choose(spec.stages, reports)))


def _stage_process(spec_dict: dict, stage: int, redis_url: str, settings: Settings) -> None:
    logging.basicConfig(level=logging.WARNING, format=f"stage {stage}: %(levelname)s %(message)s")
    try:
        run_stage(spec_dict, stage, redis_url, settings)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:  # already reported to the run's abort flag and event log
        logging.getLogger(__name__).error("%s: %s", type(e).__name__, e)
        raise SystemExit(1) from None


def train_local(
    job: JobConfig,
    train: TrainConfig,
    num_stages: int,
    redis_url: str,
    settings: Settings,
    on_event: Callable[[dict], None] | None = None,
    threads: int | None = None,
    device: str | None = None,
    keep_weights: bool = False,
    stages: Sequence[StageAssignment] = (),
    job_id: str | None = None,
    resume: int | str | None = None,
    data_urls: Sequence[str | None] = (),
) -> RunResult:
    """Train ``job`` on ``num_stages`` stage processes; checkpoints go to the store under
    ``settings.checkpoint_dir``, by ``job_id`` (a new one when None). ``resume`` ("latest" or a
    step) continues that job from one of its checkpoints, on however many stages."""
    store = CheckpointStore(settings.checkpoint_dir)
    start_step = 0
    if resume is not None:
        if job_id is None:
            raise ConfigError("resume", "needs the id of the job whose checkpoint to resume")
        manifest = store.manifest(job_id, resume)
        if manifest["model_config"] != job.model.to_dict():
            raise ConfigError("resume", f"checkpoint {manifest['step']} of job {job_id} holds another model_config")
        start_step = manifest["step"]
    if job_id is not None:  # a fresh start, or a resume, makes the checkpoints past it another future's
        store.drop_after(job_id, start_step)
    spec = RunSpec.new(job, train, num_stages, job_id=job_id, device=device, stages=stages, start_step=start_step)
    spec = replace(spec, data_urls=tuple(data_urls))  # each stage's inbound streams: there, or in redis_url
    # Each stage gets its share of the cores; oversubscribing a small machine costs more than it gives.
    threads = threads or max(1, (os.cpu_count() or 1) // num_stages)
    stage_settings = replace(settings, threads=threads)
    r = run_client(redis_url, settings.socket_timeout_s)
    try:
        spec = _with_links(spec, r, threads, settings.socket_timeout_s)
    except BaseException as e:
        r.close()
        if lost_redis(e):
            raise _lost(redis_url, e) from e
        raise
    events, liveness = EventLog(r, spec.keys), RunLiveness(r, spec.keys)
    collector = CheckpointCollector(r, store, spec)
    for shard in spec.stages if start_step else ():
        data = store.slice(spec.job_id, start_step, shard.start_layer, shard.end_layer)
        put_blob(r, keys.restore(spec.job_id, shard.stage), data, keys.RUN_TTL_S)
    ctx = mp.get_context("spawn")
    procs = [
        ctx.Process(
            target=_stage_process,
            args=(spec.to_dict(), s, redis_url, stage_settings),
            name=f"arceus-stage-{s}",
            daemon=True,
        )  # fmt: skip
        for s in range(num_stages)
    ]
    result, done, last, lost = RunResult(spec), set(), b"0-0", False
    t0 = time.perf_counter()
    try:
        for p in procs:
            p.start()
        while len(done) < num_stages:
            for entry_id, ev in events.read(last, block_ms=200):
                last = entry_id
                collector.handle(ev)
                kind = ev["type"]
                if kind == "epoch":
                    result.epochs.append(ev)
                elif kind == "stage":
                    result.stages.append(ev)
                elif kind == "stage_done":
                    done.add(ev["stage"])
                elif kind == "error":
                    raise RunFailed(ev["reason"])
                if on_event is not None:
                    on_event(ev)
            for s, p in enumerate(procs):
                if p.exitcode not in (None, 0) and s not in done:
                    reason = liveness.reason() or f"stage {s} process exited with code {p.exitcode}"
                    raise RunFailed(reason)
        result.seconds = time.perf_counter() - t0
        result.checkpoints = collector.committed
        if keep_weights:
            result.weights = read_weights(r, spec)
        return result
    except BaseException as e:
        if lost_redis(e):
            lost = True  # nothing to tell the stages through; their own calls on it fail too
            raise _lost(redis_url, e) from e
        liveness.abort(f"run stopped: {type(e).__name__}: {e}")
        raise
    finally:
        for p in procs:
            if p.pid is None:  # never started (its start, or one before it, failed)
                continue
            # A stage ends itself once told through Redis; with Redis lost it would only time out, call after call.
            p.join(timeout=0 if lost else 10)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        if not lost:
            _cleanup(r, spec.keys)
            r.delete(*[keys.restore(spec.job_id, s) for s in range(num_stages)])
        r.close()


def _lost(redis_url: str, error: BaseException) -> RunFailed:
    return RunFailed(f"lost the run's Redis at {redis_address(redis_url)}: {type(error).__name__}: {error}")


def _cleanup(r: redis.Redis, run: keys.RunKeys) -> None:
    # Streams, credits and control keys of this run; the event log and weights are kept for readers.
    kept = (run.events.encode(), run.weights.encode())
    found = list(r.scan_iter(match=run.pattern, count=1000))
    drop = [k for k in found if k not in kept]
    if drop:
        r.delete(*drop)
    for k in kept:
        r.expire(k, keys.RESULTS_TTL_S)
