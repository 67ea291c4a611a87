"""The cluster's front door: a health check anyone may call, and what a worker needs to join."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis
from flask import current_app, jsonify, request
from flask.views import MethodView

from arceus import __version__
from arceus.codeid import code_id

from .errors import TOKEN_COOKIE, Blueprint, session_value, token_matches
from .schemas import ClusterSchema, HealthSchema, JoinSchema, MessageSchema, SessionSchema

blp = Blueprint("cluster", __name__, url_prefix="/api", description="Health, signing in, joining the cluster")

SESSION_DAYS = 30


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


@blp.route("/session")
class Session(MethodView):
    @blp.arguments(SessionSchema)
    @blp.response(200, MessageSchema)
    @blp.alt_response(401, schema=MessageSchema, description="not the cluster token")
    @blp.doc(security=[])
    def post(self, body):
        """Sign a browser in: with the cluster token, the answer sets an HttpOnly, SameSite=Strict
        session cookie (derived from the token, not the token) that the API takes on every later
        request (the dashboard, /api/docs, /metrics) but joining a worker; a request that changes
        something must come from the API's own pages."""
        token = current_app.config["ARCEUS_SETTINGS"].token
        if token is None:
            return {"message": "this API needs no token (it serves this machine only)"}
        if not token_matches(body["token"], token):
            return {"code": 401, "status": "Unauthorized", "message": "wrong token: `arceus up` printed it, and "
                    "keeps it in $ARCEUS_HOME/cluster.json"}, 401  # fmt: skip
        response = jsonify({"message": "signed in"})
        response.set_cookie(TOKEN_COOKIE, session_value(token), max_age=SESSION_DAYS * 86400, httponly=True,
                            samesite="Strict", secure=request.is_secure)  # fmt: skip
        return response

    @blp.response(200, MessageSchema)
    @blp.doc(security=[])
    def delete(self):
        """Sign the browser out (forget the cookie)."""
        response = jsonify({"message": "signed out"})
        response.delete_cookie(TOKEN_COOKIE, httponly=True, samesite="Strict")
        return response


@blp.route("/cluster")
class Cluster(MethodView):
    @blp.response(200, ClusterSchema)
    def get(self):
        """What the dashboard shows of the cluster itself: the version, and where Flower runs."""
        settings = current_app.config["ARCEUS_SETTINGS"]
        return {"version": __version__, "code": code_id(), "flower_url": settings.flower_url,
                "token_required": bool(settings.token)}  # fmt: skip


@blp.route("/cluster/join")
class Join(MethodView):
    @blp.response(200, JoinSchema)
    def get(self):
        """What a worker needs to serve this cluster: its broker and stream Redis (with a Redis user
        of the workers' own where the cluster has one). Needs the cluster token."""
        settings = current_app.config["ARCEUS_SETTINGS"]
        url = settings.worker_redis_url or settings.redis_url
        return {"redis_url": _as_seen_from(url, request.host.rsplit(":", 1)[0].strip("[]")), "code": code_id()}


def _as_seen_from(url: str, host: str) -> str:
    """``url`` with a loopback host replaced by ``host`` (the address the worker reached us at)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or host in ("127.0.0.1", "localhost", "::1"):
        return url
    auth = parts.netloc.rpartition("@")[0]
    netloc = f"{auth + '@' if auth else ''}{host}{':' + str(parts.port) if parts.port else ''}"
    return urlunsplit(parts._replace(netloc=netloc))
