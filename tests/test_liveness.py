"""Run liveness: the abort flag and the heartbeats every stage and the API read."""

import pytest

from arceus.errors import RunAborted
from arceus.keys import RunKeys
from arceus.liveness import HEARTBEAT_TTL_S, RunLiveness


def test_a_heartbeat_beats_while_its_block_runs_and_says_done_at_the_end(r):
    run = RunKeys("j", "r")
    liveness = RunLiveness(r, run)
    with liveness.heartbeat(1, "stage 1"):
        assert liveness.beats([0, 1]) == [None, b"alive"]
        assert 0 < r.ttl(run.alive(1)) <= HEARTBEAT_TTL_S
    assert liveness.beats([1]) == [b"done"]
    assert r.ttl(run.alive(1)) > HEARTBEAT_TTL_S  # kept for readers, not presumed lost


def test_a_block_that_fails_is_not_marked_done(r):
    liveness = RunLiveness(r, RunKeys("j", "r"))
    with pytest.raises(ValueError), liveness.heartbeat(0, "stage 0"):
        raise ValueError("boom")
    assert liveness.beats([0]) == [b"alive"]  # expires within HEARTBEAT_TTL_S: its neighbours notice


def test_the_first_reason_wins_and_a_silent_watched_stage_aborts_the_run(r):
    liveness = RunLiveness(r, RunKeys("j", "r"))
    liveness.beat(1)
    liveness.watch([1, 2])
    with pytest.raises(RunAborted, match="stage 2 stopped responding"):
        liveness.check()  # stage 2 never beat
    liveness.abort("a later reason")
    assert liveness.reason().startswith("stage 2 stopped responding")
    with pytest.raises(RunAborted, match="stage 2 stopped responding"):
        RunLiveness(r, RunKeys("j", "r")).check()  # every stage of the run sees the same reason
