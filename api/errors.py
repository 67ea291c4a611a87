"""Errors as JSON: every response names the field or the conflict, with the right status."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

import redis
from flask import Flask, request
from flask_smorest import Api
from flask_smorest import Blueprint as _Blueprint
from kombu.exceptions import OperationalError
from webargs.flaskparser import FlaskParser

from arceus.errors import ArceusError, ConfigError, Conflict, NotFound, PartitionError, UpstreamError

__all__ = [
    "TOKEN_COOKIE",
    "ArceusApi",
    "BadRequestParser",
    "Blueprint",
    "register_error_handlers",
    "require_token",
    "session_value",
    "token_matches",
]


class BadRequestParser(FlaskParser):
    """A body that fails its schema is a 400 Bad Request (webargs defaults to 422)."""

    DEFAULT_VALIDATION_STATUS = 400


class Blueprint(_Blueprint):
    """flask-smorest's Blueprint, answering 400 (not 422) to a body that fails its schema."""

    ARGUMENTS_PARSER = BadRequestParser()


def _flatten(errors: object, path: str = "") -> list[str]:
    if isinstance(errors, dict):
        out = []
        for key, value in errors.items():
            sub = path if key in ("json", "query", "_schema") else (f"{path}.{key}" if path else str(key))
            out += _flatten(value, sub)
        return out
    if isinstance(errors, list) and all(isinstance(e, str) for e in errors):
        return [f"{path}: {' '.join(errors)}" if path else " ".join(errors)]
    if isinstance(errors, list):
        return [m for e in errors for m in _flatten(e, path)]
    return [f"{path}: {errors}"]


class ArceusApi(Api):
    def handle_http_exception(self, error):
        payload, code, headers = super().handle_http_exception(error)
        if "message" not in payload:
            payload["message"] = "; ".join(_flatten(payload["errors"])) if "errors" in payload else error.description
        if getattr(error, "valid_methods", None):  # a 405 says what is allowed (RFC 9110)
            headers = {**headers, "Allow": ", ".join(error.valid_methods)}
        return payload, code, headers


def _json(status: int, message: str, **extra: object):
    names = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
             502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}  # fmt: skip
    return {"code": status, "status": names.get(status, "Error"), "message": message, **extra}, status


# The browser's session (set by POST /api/session): a value derived from the token, so the
# token itself (Flower's password too) never sits in a browser; HttpOnly, so page scripts cannot
# read it; SameSite=Strict. Cookies ignore ports, so a page of another service on the same host is
# "same-site": a request it makes that would change something is refused unless the browser says
# it comes from the API's own origin (Sec-Fetch-Site, else Origin).
TOKEN_COOKIE = "arceus_session"
# What a browser session may not do: hand out the workers' Redis (workers use the token itself).
_TOKEN_ONLY = ("/api/cluster/join",)
_SAFE = ("GET", "HEAD", "OPTIONS")


def token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.encode(), token.encode())


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"arceus browser session", hashlib.sha256).hexdigest()


def _same_origin() -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site == "same-origin"
    origin = request.headers.get("Origin")
    return origin is not None and urlsplit(origin).netloc == request.host


def require_token(app: Flask, token: str, public: tuple[str, ...], public_under: tuple[str, ...] = ()) -> None:
    """Every request but those to ``public`` paths and paths under ``public_under`` carries
    ``Authorization: Bearer <token>``, or the browser session's cookie (then a request that
    changes something must come from the API's own pages), or gets a 401. Compared in constant
    time."""
    session = session_value(token)

    @app.before_request
    def _authenticate():
        if request.path in public or request.path.startswith(public_under):
            return None
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and token_matches(header.removeprefix("Bearer "), token):
            return None
        cookie = request.cookies.get(TOKEN_COOKIE)
        if not header and cookie and token_matches(cookie, session) and request.path not in _TOKEN_ONLY:
            if request.method in _SAFE or _same_origin():
                return None
            body, status = _json(403, "a browser session's request that changes something must come from the "
                                      "Arceus dashboard itself (this one came from another page)")  # fmt: skip
            return body, status
        why = "wrong token" if (header or cookie) else "no token"
        body, status = _json(401, f"{why}: send the cluster token as `Authorization: Bearer <token>` "
                                  "(`arceus up` keeps it in $ARCEUS_HOME/cluster.json)")  # fmt: skip
        return body, status, {"WWW-Authenticate": 'Bearer realm="arceus"'}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(redis.ConnectionError)
    @app.errorhandler(redis.TimeoutError)
    @app.errorhandler(OperationalError)
    def _redis_down(e: Exception):
        return _json(503, f"Redis does not answer ({type(e).__name__}: {e}); is it running? Try again when it is")

    @app.errorhandler(RecursionError)
    def _too_deep(e: RecursionError):
        return _json(400, "the JSON body nests too deeply")

    @app.errorhandler(ConfigError)
    def _config(e: ConfigError):
        return _json(400, str(e), errors={e.field: [e.reason]})

    @app.errorhandler(NotFound)
    def _not_found(e: NotFound):
        return _json(404, str(e))

    @app.errorhandler(Conflict)
    def _conflict(e: Conflict):
        return _json(409, str(e))

    @app.errorhandler(PartitionError)
    def _partition(e: PartitionError):
        return _json(409, str(e))  # the message says what to do

    @app.errorhandler(UpstreamError)
    def _upstream(e: UpstreamError):
        return _json(e.status, str(e))

    @app.errorhandler(ArceusError)
    def _other(e: ArceusError):
        return _json(500, f"{type(e).__name__}: {e}")
