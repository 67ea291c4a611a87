"""One Arceus stage as its own process, for bench/lan.py (which starts it inside a namespace).

    python -m bench.lan_stage SPEC_JSON_FILE STAGE REDIS_URL
    python -m bench.lan_stage --probe SPEC_JSON_FILE STAGE REDIS_URL

The last stage prints the run's epoch rows as JSON lines when the run is over. With
``--probe``, the stage only measures its links from its host, as a worker does when it
loads its shard (``engine.probe``), and prints the report as one JSON line.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import redis

from arceus.events import EventLog
from arceus.launch.stages import run_stage
from arceus.plan.runspec import RunSpec
from arceus.settings import Settings


def main() -> None:
    probe = sys.argv[1] == "--probe"
    argv = sys.argv[2:] if probe else sys.argv[1:]
    spec_dict = json.loads(Path(argv[0]).read_text())
    stage, url = int(argv[1]), argv[2]
    if probe:
        import torch  # noqa: PLC0415

        from arceus.engine.probe import measure  # noqa: PLC0415

        torch.set_num_threads(1)
        spec = RunSpec.from_dict(spec_dict)
        print(json.dumps(measure(redis.Redis.from_url(url), spec.job_id, spec.job, spec.stages[stage],
                                 torch.device("cpu"), spec.data_urls)))  # fmt: skip
        return
    run_stage(spec_dict, stage, url, Settings.from_env(threads=1))
    spec = RunSpec.from_dict(spec_dict)
    if stage == spec.num_stages - 1:
        for e in EventLog(redis.Redis.from_url(url), spec.keys).all():
            if e["type"] in ("epoch", "stage"):
                print(json.dumps(e), flush=True)


if __name__ == "__main__":
    main()
