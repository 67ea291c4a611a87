"""The cluster's front door: a health check anyone may call, and what a worker needs to join."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from flask import current_app, request
from flask.views import MethodView

from .errors import Blueprint
from .schemas import HealthSchema, JoinSchema

blp = Blueprint("cluster", __name__, url_prefix="/api", description="Health, and joining the cluster")


@blp.route("/health")
class Health(MethodView):
    @blp.response(200, HealthSchema)
    @blp.alt_response(503, schema=HealthSchema, description="Redis does not answer")
    @blp.doc(security=[])
    def get(self):
        """Whether the API and its Redis answer (the one route that needs no token)."""
        control = current_app.extensions["arceus"]
        try:
            control.r.ping()
        except redis.RedisError as e:
            return {"status": "unavailable", "redis": f"{type(e).__name__}: {e}"}, 503
        return {"status": "ok", "redis": "ok"}


@blp.route("/cluster/join")
class Join(MethodView):
    @blp.response(200, JoinSchema)
    def get(self):
        """What a worker needs to serve this cluster: its broker and stream Redis (with a Redis user
        of the workers' own where the cluster has one). Needs the cluster token."""
        settings = current_app.config["ARCEUS_SETTINGS"]
        url = settings.worker_redis_url or settings.redis_url
        return {"redis_url": _as_seen_from(url, request.host.rsplit(":", 1)[0].strip("[]"))}


def _as_seen_from(url: str, host: str) -> str:
    """``url`` with a loopback host replaced by ``host`` (the address the worker reached us at)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or host in ("127.0.0.1", "localhost", "::1"):
        return url
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth + '@' if auth else ''}{host}{':' + str(parts.port) if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))
