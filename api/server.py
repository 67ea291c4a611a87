"""``python -m api.server``: the REST API on port 4000 (as the original Arceus), and the
supervisor that follows its jobs' runs."""

from __future__ import annotations

import argparse
import logging

from arceus.control.supervisor import Supervisor
from arceus.settings import Settings

from . import create_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m api.server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for the LAN)")
    p.add_argument("--port", type=int, default=4000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(Settings.from_env())
    # Follows every run: writes its checkpoints, marks it completed, recovers it from a lost
    # device (arceus.control.supervisor).
    control = app.extensions["arceus"]
    supervisor = Supervisor(control.r, control.checkpoints, recoverer=control).start()
    try:
        # Threaded: an initialize request waits for the workers while others are served.
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
