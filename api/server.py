"""``python -m api.server``: the REST API on port 4000 (as the original Arceus)."""

from __future__ import annotations

import argparse
import logging

from arceus.settings import Settings

from . import create_app


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m api.server", description=__doc__)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 for the LAN)")
    p.add_argument("--port", type=int, default=4000)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(Settings.from_env())
    # Threaded: an initialize request waits for the workers while others are served.
    app.run(host=args.host, port=args.port, threaded=True)


if __name__ == "__main__":
    main()
