"""One Arceus stage as its own process, for bench/lan.py (which starts it inside a namespace).

    python -m bench.lan_stage SPEC_JSON_FILE STAGE REDIS_URL

The last stage prints the run's epoch rows as JSON lines when the run is over.
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
    spec_dict = json.loads(Path(sys.argv[1]).read_text())
    stage, url = int(sys.argv[2]), sys.argv[3]
    run_stage(spec_dict, stage, url, Settings.from_env(threads=1))
    spec = RunSpec.from_dict(spec_dict)
    if stage == spec.num_stages - 1:
        for e in EventLog(redis.Redis.from_url(url), spec.keys).all():
            if e["type"] in ("epoch", "stage"):
                print(json.dumps(e), flush=True)


if __name__ == "__main__":
    main()
