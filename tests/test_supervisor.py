"""The supervisor against a real Redis: what it does for one job never holds up another's."""

from __future__ import annotations

import queue
import threading

from arceus.checkpoints import CheckpointStore
from arceus.config import SEED_JOB, JobConfig, TrainConfig
from arceus.control.jobs import JobStore
from arceus.control.supervisor import Supervisor
from arceus.events import EventLog
from arceus.keys import RunKeys
from arceus.liveness import RunLiveness
from arceus.plan.partition import StageAssignment


class SlowRecoverer:
    """The API's ``Control`` as the supervisor sees it, with a recovery that takes until released
    (as a load does while a device's worker takes its time to confirm its shard)."""

    def __init__(self) -> None:
        self.lost: queue.Queue = queue.Queue()
        self.recovering = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def lose(self, job: dict, stage: int, step: int) -> None:
        self.lost.put((job["job_id"], stage, step))

    def recover(self, job: dict) -> None:
        self.calls += 1
        self.recovering.set()
        self.release.wait(30)


def _training(jobs: JobStore, run_id: str) -> str:
    job_id = jobs.create(JobConfig.parse(SEED_JOB))
    plan = [StageAssignment(0, 0, 2, "d0").to_dict(), StageAssignment(1, 2, 3, "d1").to_dict()]
    jobs.transition(job_id, "training", allowed_from=("created",), run_id=run_id, plan=plan,
                    train_config=TrainConfig.parse({"epochs": 1}).to_dict())  # fmt: skip
    return job_id


def test_a_slow_recovery_holds_up_no_other_job(r, tmp_path):
    jobs = JobStore(r)
    stuck, other = _training(jobs, "run-a"), _training(jobs, "run-b")
    jobs.transition(stuck, "recovering", allowed_from=("training",), lost_device="d1", lost_stage=1,
                    lost_step=3, lost_cause="no heartbeat for 6s", recovering_since=0)  # fmt: skip
    recoverer = SlowRecoverer()
    supervisor = Supervisor(r, CheckpointStore(tmp_path), recoverer, interval_s=0.05).start()
    try:
        assert recoverer.recovering.wait(10), "the supervisor never recovered the job"
        # While that recovery is still loading, the other job loses a stage: it must be seen now.
        RunLiveness(r, RunKeys(other, "run-b")).lose(0, "stage 0 stopped responding")
        assert recoverer.lost.get(timeout=10)[:2] == (other, 0)
        assert recoverer.calls == 1  # its passes (dozens by now) started no second recovery of the job
    finally:
        recoverer.release.set()
        supervisor.stop()


def test_a_lost_run_is_at_least_at_the_last_checkpoint_it_saved(r, tmp_path):
    # The last stage reports progress every 0.5 s at most: a run of fast epochs may report its first
    # step, then only checkpoints, before a stage is lost.
    jobs = JobStore(r)
    job_id = _training(jobs, "run-c")
    events = EventLog(r, RunKeys(job_id, "run-c"))
    events.emit("progress", epoch=1, step=1, steps=30, loss=2.3, accuracy=0.1, samples=100, job_step=1)
    for stage in (0, 1):  # their parts are gone from Redis: the store says so, and the step still counts
        events.emit("checkpoint_part", stage=stage, step=60, epoch=2, batch=0, end_epoch=3)
    recoverer = SlowRecoverer()
    supervisor = Supervisor(r, CheckpointStore(tmp_path), recoverer, interval_s=0.05).start()
    try:
        RunLiveness(r, RunKeys(job_id, "run-c")).lose(1, "stage 1 stopped responding")
        assert recoverer.lost.get(timeout=10) == (job_id, 1, 60)
    finally:
        supervisor.stop()


def test_a_recovery_begun_from_a_record_the_job_has_moved_on_from_does_nothing(r, tmp_path):
    # A pass reads every job, then handles each: the job's previous recovery may end in between,
    # having moved the job on to a new run. Recovering it again would load shards onto the
    # workers its new run is training on.
    jobs = JobStore(r)
    job_id = _training(jobs, "run-a")
    jobs.transition(job_id, "recovering", allowed_from=("training",), lost_device="d1", lost_stage=1,
                    lost_step=3, lost_cause="no heartbeat for 6s", recovering_since=0)  # fmt: skip
    stale = jobs.get(job_id)
    jobs.transition(job_id, "training", allowed_from=("recovering",), run_id="run-b")  # that recovery's end
    recoverer = SlowRecoverer()
    recoverer.release.set()
    supervisor = Supervisor(r, CheckpointStore(tmp_path), recoverer)  # not started: one recovery, by hand
    supervisor._recover(stale)
    supervisor.stop()  # waits for its recovery thread
    assert recoverer.calls == 0
    jobs.transition(job_id, "recovering", allowed_from=("training",))  # run-b is lost in turn
    supervisor._recover(jobs.get(job_id))
    supervisor.stop()
    assert recoverer.calls == 1  # the job as it is now, recovering: recovered
