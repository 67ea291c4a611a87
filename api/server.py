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
# Open connections; more wait in the listen backlog. An idle connection costs a descriptor, not a
# thread (waitress reads requests with poll), so the limit is high: 500 half-open clients must not
# crowd out the real ones. Capped below the process's descriptor limit (macOS starts at 256).
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT_S = 30  # a connection silent this long (no request under way) is closed


def _connection_limit() -> int:
    """``CONNECTION_LIMIT``, after raising the soft descriptor limit as far as allowed, or lower."""
    try:
        import resource  # noqa: PLC0415 - POSIX only

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = CONNECTION_LIMIT + 256 if hard == resource.RLIM_INFINITY else min(hard, CONNECTION_LIMIT + 256)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        return CONNECTION_LIMIT if soft == resource.RLIM_INFINITY else max(32, min(CONNECTION_LIMIT, soft - 256))
    except (ImportError, ValueError, OSError):
        return 100


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
        serve(app, host=args.host, port=args.port, threads=THREADS, connection_limit=_connection_limit(),
              channel_timeout=CHANNEL_TIMEOUT_S, cleanup_interval=5, asyncore_use_poll=True,
              ident="arceus")  # fmt: skip
    finally:
        supervisor.stop()


if __name__ == "__main__":
    main()
