"""The job state machine, as a table, against a real Redis."""

import itertools

import pytest

from arceus.config import SEED_JOB, JobConfig
from arceus.control.jobs import TRANSITIONS, JobStore
from arceus.errors import Conflict, NotFound

STATES = tuple(TRANSITIONS)


def test_the_states_are_closed_and_every_one_is_reachable():
    assert STATES == ("created", "initializing", "ready", "training", "recovering", "completed", "failed", "stopped")
    assert {t for targets in TRANSITIONS.values() for t in targets} <= set(STATES)
    reached, frontier = {"created"}, ["created"]
    while frontier:
        for nxt in TRANSITIONS[frontier.pop()]:
            if nxt not in reached:
                reached.add(nxt)
                frontier.append(nxt)
    assert reached == set(STATES)


@pytest.mark.parametrize(("current", "to"), list(itertools.product(STATES, STATES)))
def test_a_transition_happens_exactly_when_the_table_allows_it(r, current, to):
    store = JobStore(r)
    job_id = store.create(JobConfig.parse(SEED_JOB))
    store.set_fields(job_id, status=current)
    if to in TRANSITIONS[current]:
        assert store.transition(job_id, to) == {"from": current, "to": to, "run_id": ""}
        assert store.get(job_id)["status"] == to
    else:
        with pytest.raises(Conflict, match=f"job {job_id} is (already )?{current}"):
            store.transition(job_id, to)
        assert store.get(job_id)["status"] == current  # a refused transition changes nothing


def test_a_transition_of_an_unknown_job_is_not_found(r):
    with pytest.raises(NotFound, match="job 'nope' does not exist"):
        JobStore(r).transition("nope", "initializing")
