"""The REST API: ``create_app`` wires Flask, flask-smorest, the job store and Celery."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import redis
from flask import Flask, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from arceus.settings import Settings

__all__ = ["create_app"]

SWAGGER_ASSETS = "/api/docs/assets"
# The dashboard's page, script and style: files of ours, served as they are (no build step).
DASHBOARD = Path(__file__).parent / "dashboard"

# 64 KiB: a job config is a few hundred bytes; nothing legitimate comes close.
MAX_REQUEST_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Flask:
    """The API for ``settings`` (default: from the environment). Imports no torch."""
    from arceus.codeid import code_id  # noqa: PLC0415
    from workers import DEFAULT_REDIS_URL, make_celery  # noqa: PLC0415 - imported on demand: no torch

    from . import cluster, devices, events, jobs, network  # noqa: PLC0415
    from .control import Control  # noqa: PLC0415
    from .errors import ArceusApi, register_error_handlers, require_token  # noqa: PLC0415
    from .monitoring import install_metrics  # noqa: PLC0415
    from .schemas import document, document_model_config  # noqa: PLC0415

    settings = settings or Settings.from_env()
    settings = replace(settings, redis_url=settings.redis_url or DEFAULT_REDIS_URL)
    code_id()  # the code this API runs, read as it starts: files edited later do not change it

    app = Flask("arceus")
    app.config.update(
        API_TITLE="Arceus",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        # Swagger UI's assets from the swagger-ui-bundle wheel, served here: the page works offline.
        OPENAPI_SWAGGER_UI_URL=f"{SWAGGER_ASSETS}/",
        # Swagger UI's Authorize button sends the cluster token as every route but health needs it.
        API_SPEC_OPTIONS={
            "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
            "security": [{"token": []}],
        },
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
        JSON_SORT_KEYS=False,
        ARCEUS_SETTINGS=settings,
    )
    api = ArceusApi(app)
    document(app, api)
    register_error_handlers(app)
    # Bounded waits: a request that needs Redis while it is down gets a 503 in seconds, not a hang.
    r = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=3)
    app.extensions["arceus"] = Control(r, make_celery(settings), settings)
    install_metrics(app, app.extensions["arceus"])  # first: it times the token check too
    if settings.token:
        # The dashboard's page and assets are public (they hold no data); it signs in for the rest.
        require_token(app, settings.token, ("/api/health", "/api/session", "/", "/dashboard"), ("/dashboard/",))
    for blp in (cluster.blp, jobs.blp, events.blp, devices.blp, devices.workers_blp, network.blp):
        api.register_blueprint(blp)

    @app.get("/")
    @app.get("/dashboard")
    def _dashboard():
        return send_from_directory(DASHBOARD, "index.html", max_age=0)

    @app.get("/dashboard/assets/<path:name>")
    def _dashboard_asset(name: str):
        return send_from_directory(DASHBOARD, name, max_age=0)

    @app.get(f"{SWAGGER_ASSETS}/<path:name>")
    def _swagger_asset(name: str):
        return send_from_directory(swagger_ui_path, name, max_age=86400)

    document_model_config(api)
    return app
