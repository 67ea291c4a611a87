"""The global gradient norm of a step, over all stages, for clipping (``grad_clip``).

Each stage adds its per-parameter gradient norms to the run's ``grad_norms`` hash under
``"<step>:<stage>"`` and waits until every stage's are there; all of them then compute the
same global norm, in model order, as one process's ``clip_grad_norm_`` would. A stage only
writes step s after it has read step s - 1, and every other stage has then read s - 2: so it
drops its own s - 2 entry, and the hash holds at most two steps.
"""

from __future__ import annotations

import json
import math
import time

import redis

from .. import keys
from ..errors import ProtocolError, StageTimeout
from ..liveness import RunLiveness

__all__ = ["GradNormExchange"]


class GradNormExchange:
    def __init__(
        self, r: redis.Redis, run: keys.RunKeys, stage: int, num_stages: int, liveness: RunLiveness,
        timeout_s: float, who: str,
    ) -> None:  # fmt: skip
        self.r, self.key, self.stage, self.num_stages = r, run.grad_norms, stage, num_stages
        self.liveness, self.timeout_s, self.who = liveness, timeout_s, who

    def all_norms(self, step: int, mine: list[float]) -> list[float]:
        """Every stage's norms for ``step``, stage 0's first."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self.key, f"{step}:{self.stage}", json.dumps(mine))
        pipe.hdel(self.key, f"{step - 2}:{self.stage}")
        pipe.expire(self.key, keys.RUN_TTL_S)
        pipe.execute()
        fields = [f"{step}:{s}" for s in range(self.num_stages)]
        deadline, last_check, pause = time.monotonic() + self.timeout_s, time.monotonic(), 0.0005
        while True:
            got = self.r.hmget(self.key, fields)
            if all(v is not None for v in got):
                return [n for s, v in enumerate(got) for n in self._parse(s, v)]
            if time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                self.liveness.check()
            if time.monotonic() > deadline:
                missing = [s for s, v in enumerate(got) if v is None]
                raise StageTimeout(
                    f"{self.who} waited {self.timeout_s:.0f}s for the gradient norms of stages {missing}"
                )
            time.sleep(pause)
            pause = min(2 * pause, 0.02)  # 0.5 ms doubling to 20 ms: quick when close, light when long

    def _parse(self, stage: int, raw: bytes) -> list[float]:
        try:
            norms = json.loads(raw)
        except ValueError:
            norms = None
        if not isinstance(norms, list) or not all(
            isinstance(n, (int, float)) and not isinstance(n, bool) and math.isfinite(n) and n >= 0 for n in norms
        ):
            raise ProtocolError(f"{self.who}: stage {stage}'s gradient norms are not a list of finite numbers >= 0")
        return [float(n) for n in norms]
