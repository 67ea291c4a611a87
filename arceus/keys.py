"""Every Redis key, queue name and expiry Arceus uses: the protocol between its processes.

(The heartbeat's short expiry is liveness policy and lives with it, in ``arceus.liveness``.)

The API, the workers and the stages run on different machines and only share Redis, so
the names below are a wire format. ``LAYOUT`` lists them all (``tests/test_keys.py``
checks it against what a real run leaves in Redis); change a name here and every process
follows.

Job and device state lives under ``arceus:``; everything one training run writes lives
under its run prefix ``arceus:job:<job>:run:<run>``, so a restarted run never reads an
earlier run's entries and a job's keys are found (and deleted) by that prefix.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

__all__ = [
    "ACTIVE_JOBS",
    "DEFAULT_QUEUE",
    "DEVICES",
    "DEVICE_NAMES",
    "JOBS",
    "LAYOUT",
    "PLAN_LOCK",
    "RESULTS_TTL_S",
    "RUN_TTL_S",
    "TERAFLOPS",
    "UNLOAD_EXPIRES_S",
    "RunKeys",
    "credit",
    "device",
    "device_beat",
    "describe",
    "job",
    "job_devices",
    "job_events",
    "job_pattern",
    "queue_for",
    "restore",
]

NAMESPACE = "arceus"
# Longer than any run: a run's control keys (abort reason, claims) and Celery's redelivery
# timeout must outlive the run they guard.
RUN_TTL_S = 7 * 24 * 3600
# What readers collect after a run (events and weights of a local run, a finished stage's
# heartbeat, Celery task results): a day.
RESULTS_TTL_S = 24 * 3600
# An unload task (free a deleted job's shard) left in the queue of a worker that is gone.
UNLOAD_EXPIRES_S = 3600

JOBS = f"{NAMESPACE}:jobs"  # sorted set: job id -> creation time
ACTIVE_JOBS = f"{NAMESPACE}:jobs:active"  # set: the jobs initializing, training or recovering now
DEVICES = f"{NAMESPACE}:devices"  # set of device ids
DEVICE_NAMES = f"{NAMESPACE}:device-names"  # hash: device name -> the id holding it (names are unique)
PLAN_LOCK = f"{NAMESPACE}:lock:plan"  # held while a job picks devices or one is deleted (JobStore.planning)
TERAFLOPS = f"{NAMESPACE}:teraflops"  # list of JSON rows, one per stage of a finished run
DEFAULT_QUEUE = NAMESPACE  # Celery's queue for a task sent to no device (none is, today)


def job(job_id: str) -> str:
    """Hash: the job's status, config, plan, run id, error, timestamps."""
    return f"{NAMESPACE}:job:{job_id}"


def job_events(job_id: str) -> str:
    """Stream: the job's state changes (JSON: status from, to, run id, error), in order; with its
    runs' event streams, the job's live feed (``events.JobFeed``)."""
    return f"{job(job_id)}:events"


def job_pattern(job_id: str) -> str:
    """Glob matching every key under the job's: its devices set and all its runs' keys."""
    return f"{job(job_id)}:*"


def job_devices(job_id: str) -> str:
    """Set: the ids of the devices registered for the job."""
    return f"{job(job_id)}:devices"


def restore(job_id: str, stage: int) -> str:
    """List of chunks (``arceus.blobs``): the checkpoint slice ``stage`` of the job loads next."""
    return f"{job(job_id)}:restore:{stage}"


def probe(job_id: str, stage: int) -> str:
    """String, for a few seconds: the payload a stage's worker times its leg to Redis with (``engine.probe``)."""
    return f"{job(job_id)}:probe:{stage}"


def device(device_id: str) -> str:
    """String: the device's JSON record (what its worker reported, its queue)."""
    return f"{NAMESPACE}:device:{device_id}"


def device_beat(device_id: str) -> str:
    """String with a short expiry: the device's lease, renewed by its worker's heartbeat (JSON:
    the Celery worker's name, pid, time), or ``registered`` until a worker first beats."""
    return f"{device(device_id)}:beat"


def device_deleted(device_id: str) -> str:
    """String for a day: the device was deleted through the API, so its worker's heartbeat must not
    register it again (``control.devices.DeviceBeat``)."""
    return f"{device(device_id)}:deleted"


def queue_for(device_id: str) -> str:
    """The Celery queue device ID's worker serves (``celery -A workers worker -Q device-ID``).
    Ids are random, never sequential: a Redis that lost its data gives no id, and so no queue,
    that a worker of before still serves."""
    return f"device-{device_id}"


def credit(stream: str) -> str:
    """List: credits a stream's receiver hands back to its sender (one per entry taken)."""
    return f"{stream}:credit"


@dataclass(frozen=True)
class RunKeys:
    """The keys of one training run, all under ``prefix``."""

    job_id: str
    run_id: str

    @property
    def prefix(self) -> str:
        return f"{job(self.job_id)}:run:{self.run_id}"

    @property
    def pattern(self) -> str:
        """Glob matching every key of the run."""
        return f"{self.prefix}:*"

    def fwd(self, stage: int) -> str:
        """Stream: activations (and markers) into ``stage``."""
        return f"{self.prefix}:fwd:{stage}"

    def bwd(self, stage: int) -> str:
        """Stream: gradients into ``stage``."""
        return f"{self.prefix}:bwd:{stage}"

    @property
    def events(self) -> str:
        """Stream: progress, epoch, stage and error events (JSON), read by the API and launchers."""
        return f"{self.prefix}:events"

    @property
    def weights(self) -> str:
        """Hash: parameter name -> lossless payload, published by every stage at the end."""
        return f"{self.prefix}:weights"

    @property
    def abort(self) -> str:
        """String: the first reason the run was aborted for."""
        return f"{self.prefix}:abort"

    @property
    def lost(self) -> str:
        """String: the first stage found to have stopped beating (its worker was lost)."""
        return f"{self.prefix}:lost"

    def alive(self, stage: int) -> str:
        """String with a short expiry: ``alive`` while the stage beats, ``done`` when it finished."""
        return f"{self.prefix}:alive:{stage}"

    @property
    def ready(self) -> str:
        """Counter: stages at the start barrier."""
        return f"{self.prefix}:ready"

    def claimed(self, stage: int) -> str:
        """String: the host that runs ``stage``; a redelivered task finds it taken."""
        return f"{self.prefix}:claimed:{stage}"

    @property
    def grad_norms(self) -> str:
        """Hash: "<step>:<stage>" -> the stage's per-parameter gradient norms (JSON), for clipping."""
        return f"{self.prefix}:gradnorms"

    def checkpoint_part(self, step: int, stage: int) -> str:
        """List of chunks (``arceus.blobs``): a stage's part of the checkpoint at ``step``, until
        the run's follower writes it to the checkpoint store."""
        return f"{self.prefix}:ckpt:{step}:{stage}"


# (glob pattern, type, meaning): every key above. A key Redis holds that matches none of
# these (and is not Celery's own) was written by code that bypassed this module.
_RUN = RunKeys("*", "*")
LAYOUT: tuple[tuple[str, str, str], ...] = (
    (JOBS, "zset", "job ids by creation time"),
    (job("*"), "hash", "a job's status, config, plan, run id, error"),
    (job_devices("*"), "set", "the devices registered for a job"),
    (job_events("*"), "stream", "a job's state changes"),
    (restore("*", "*"), "list", "the checkpoint slice a stage loads next"),
    (probe("*", "*"), "string", "the payload a stage times its link with"),
    (ACTIVE_JOBS, "set", "the jobs initializing, training or recovering"),
    (DEVICES, "set", "all device ids"),
    (DEVICE_NAMES, "hash", "device names and the ids holding them"),
    (PLAN_LOCK, "string", "the lock on choosing devices (and deleting one)"),
    (device("*"), "string", "a device's JSON record"),
    (device_beat("*"), "string", "a device's lease (its worker's heartbeat)"),
    (device_deleted("*"), "string", "a device deleted through the API, which its worker must not register again"),
    (TERAFLOPS, "list", "per-stage TFLOP/s of finished runs"),
    (queue_for("*"), "list", "a device's Celery queue"),
    (DEFAULT_QUEUE, "list", "Celery's default queue"),
    (_RUN.fwd("*"), "stream", "activations into a stage"),
    (_RUN.bwd("*"), "stream", "gradients into a stage"),
    (credit(_RUN.fwd("*")), "list", "credits back to the sender of activations"),
    (credit(_RUN.bwd("*")), "list", "credits back to the sender of gradients"),
    (_RUN.events, "stream", "a run's events"),
    (_RUN.weights, "hash", "a run's final parameters"),
    (_RUN.abort, "string", "why a run was aborted"),
    (_RUN.alive("*"), "string", "a stage's heartbeat"),
    (_RUN.lost, "string", "the first stage a run lost"),
    (_RUN.ready, "string", "the start barrier"),
    (_RUN.claimed("*"), "string", "which host runs a stage"),
    (_RUN.checkpoint_part("*", "*"), "list", "a stage's checkpoint part on its way to the store"),
    (_RUN.grad_norms, "hash", "every stage's gradient norms of a step"),
)


def describe(key: str) -> str | None:
    """The LAYOUT meaning of ``key``, or None when it is not an Arceus key. The most specific
    pattern wins: ``arceus:job:*`` also matches a run's keys."""
    matches = [(p, meaning) for p, _, meaning in LAYOUT if fnmatch.fnmatchcase(key, p)]
    return max(matches, key=lambda m: (m[0].count(":"), "*" not in m[0]))[1] if matches else None
