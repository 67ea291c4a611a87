"""``python -m api.server``: the REST API on port 4000 (as the original Arceus), and the
supervisor that follows its jobs' runs.

Served by waitress: a production WSGI server in pure Python, so the same on macOS and Linux
with no compiler, in one process (the supervisor thread lives beside the views). Connections
are read asynchronously, so a slow or half-open client holds no thread; it is closed after
``CHANNEL_TIMEOUT_S`` of silence, and at most ``CONNECTION_LIMIT`` are open at once.
"""

from __future__ import annotations

import argparse
import logging

from waitress import serve

from arceus.control.supervisor import Supervisor
from arceus.settings import Settings

from . import create_app

THREADS = 16  # requests handled at once (an initialize holds one while its workers load)
CONNECTION_LIMIT = 200  # open connections; more wait in the listen backlog
CHANNEL_TIMEOUT_S = 30  # a connection silent this long (no request under way) is closed


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m api.server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for the LAN)")
    p.add_argument("--port", type=int, default=4000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings.from_env()
    if args.host not in ("127.0.0.1", "localhost", "::1") and not settings.token:
        p.error(f"serving {args.host} (beyond this machine) needs a cluster token: set ARCEUS_TOKEN "
                "(`arceus up --host 0.0.0.0` makes and keeps one)")  # fmt: skip
    app = create_app(settings)
    # Follows every run: writes its checkpoints, marks it completed, recovers it from a lost
    # device (arceus.control.supervisor).
    control = app.extensions["arceus"]
    supervisor = Supervisor(control.r, control.checkpoints, recoverer=control).start()
    try:
        # Threads: an initialize request waits for the workers while others are served.
        serve(app, host=args.host, port=args.port, threads=THREADS, connection_limit=CONNECTION_LIMIT,
              channel_timeout=CHANNEL_TIMEOUT_S, cleanup_interval=5, ident="arceus")  # fmt: skip
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
