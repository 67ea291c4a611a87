"""Run liveness: a run's abort flag and its stages' heartbeats, in Redis (no torch here).

Every wait of a stage checks both, so a stop, a failed neighbour or a killed worker ends
every stage of the run within seconds instead of at a long timeout. The API reads the
same keys: it sets the flag to stop a run, and fails a run none of whose stages beat.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import redis

from . import keys
from .errors import RunAborted, StageTimeout

__all__ = ["HEARTBEAT_S", "HEARTBEAT_TTL_S", "RunLiveness", "lost_redis"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 1.0
HEARTBEAT_TTL_S = 6.0  # a stage silent this long is presumed lost (its process died)


def lost_redis(error: BaseException) -> bool:
    """Whether ``error`` says a Redis went away (restarted, loading its data again, or its machine
    slept or left the network): a stage that fails with one is lost to its run, which the API
    recovers, rather than failed. A refused password is redis-py's ConnectionError too, but
    waiting does not mend it."""
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError)) and not isinstance(
        error, (redis.AuthenticationError, redis.exceptions.AuthorizationError)
    )


class RunLiveness:
    """The run's abort flag and its stages' heartbeats.

    The first reason set wins. Once ``watch`` names the stages, ``check`` also fails when
    one of them stopped beating without saying it finished: a killed worker is noticed
    by its neighbours within ``HEARTBEAT_TTL_S`` seconds.
    """

    def __init__(self, r: redis.Redis, run: keys.RunKeys) -> None:
        self.r, self.run = r, run
        self._watched: list[int] = []

    def abort(self, reason: str) -> None:
        self.r.set(self.run.abort, reason, nx=True, ex=keys.RUN_TTL_S)

    def reason(self) -> str | None:
        v = self.r.get(self.run.abort)
        return v.decode() if v is not None else None

    def lose(self, stage: int, reason: str) -> None:
        """Record that ``stage`` was lost (the first one found wins) and abort the run."""
        self.r.set(self.run.lost, stage, nx=True, ex=keys.RUN_TTL_S)
        self.abort(reason)

    def lost(self) -> int | None:
        """The stage the run lost, if one stopped beating: the API then recovers the run."""
        v = self.r.get(self.run.lost)
        return int(v) if v is not None else None

    def started(self, num_stages: int) -> bool:
        """Every stage has beaten (and reached the start barrier): a missing beat now means lost."""
        return int(self.r.get(self.run.ready) or 0) >= num_stages

    def beat(self, stage: int, finished: bool = False) -> None:
        if finished:
            self.r.set(self.run.alive(stage), "done", ex=keys.RESULTS_TTL_S)
        else:
            self.r.set(self.run.alive(stage), "alive", ex=int(HEARTBEAT_TTL_S))

    def beats(self, stages: list[int]) -> list[bytes | None]:
        """Each stage's heartbeat: ``b"alive"``, ``b"done"``, or None once it expired (or never began)."""
        return self.r.mget([self.run.alive(s) for s in stages]) if stages else []

    def watch(self, stages: list[int]) -> None:
        self._watched = list(stages)

    def check(self) -> None:
        """Raise ``RunAborted`` when the run was aborted or a watched stage stopped beating."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.run.abort)
        for s in self._watched:
            pipe.get(self.run.alive(s))
        reason, *beats = pipe.execute()
        if reason is not None:
            raise RunAborted(reason.decode())
        for s, beat in zip(self._watched, beats, strict=True):
            if beat is None:
                reason = f"stage {s} stopped responding (no heartbeat for {HEARTBEAT_TTL_S:.0f}s): its worker was lost"
                self.lose(s, reason)
                raise RunAborted(self.reason() or reason)

    def wait_for_stages(self, num_stages: int, timeout_s: float, who: str) -> None:
        """The run's start barrier: count this stage in, then wait until all ``num_stages`` are."""
        self.r.incr(self.run.ready)
        deadline = time.monotonic() + timeout_s
        while int(self.r.get(self.run.ready) or 0) < num_stages:
            self.check()
            if time.monotonic() > deadline:
                raise StageTimeout(f"{who} waited {timeout_s:.0f}s for the other stages")
            time.sleep(0.01)

    @contextlib.contextmanager
    def heartbeat(self, stage: int, who: str) -> Iterator[None]:
        """Beat for ``stage`` every ``HEARTBEAT_S`` from a thread while the block runs. A block
        that ends normally marks the stage finished, so its neighbours stop watching it."""
        self.beat(stage)
        stop = threading.Event()

        def loop() -> None:
            while not stop.wait(HEARTBEAT_S):
                try:
                    self.beat(stage)
                except redis.RedisError as e:  # the stage's own next Redis call hits it and reports it
                    log.warning("%s: heartbeat failed: %s", who, e)

        beater = threading.Thread(target=loop, daemon=True, name="arceus-heartbeat")
        beater.start()
        try:
            yield
        except BaseException:
            stop.set()  # no join: a beat stuck on a lost Redis must not hold up the error
            raise
        stop.set()
        beater.join()
        self.beat(stage, finished=True)
