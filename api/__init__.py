"""The REST API: ``create_app`` wires Flask, flask-smorest, the job store and Celery."""

from __future__ import annotations

from dataclasses import replace

import redis
from flask import Flask

from arceus.settings import Settings

__all__ = ["create_app"]

# 64 KiB: a job config is a few hundred bytes; nothing legitimate comes close.
MAX_REQUEST_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """The API for ``settings`` (default: from the environment). Imports no torch."""
    from workers import DEFAULT_REDIS_URL, make_celery  # noqa: PLC0415 - imported on demand: no torch

    from . import devices, jobs, network  # noqa: PLC0415
    from .control import Control  # noqa: PLC0415
    from .errors import ArceusApi, register_error_handlers  # noqa: PLC0415

    settings = settings or Settings.from_env()
    settings = replace(settings, redis_url=settings.redis_url or DEFAULT_REDIS_URL)

    app = Flask("arceus")
    app.config.update(
        API_TITLE="Arceus",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist/",
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
    )
    api = ArceusApi(app)
    register_error_handlers(app)
    app.extensions["arceus"] = Control(redis.Redis.from_url(settings.redis_url), make_celery(settings), settings)
    for blp in (jobs.blp, devices.blp, devices.workers_blp, network.blp):
        api.register_blueprint(blp)
    return app
