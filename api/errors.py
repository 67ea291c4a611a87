"""Errors as JSON: every response names the field or the conflict, with the right status."""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api
from flask_smorest import Blueprint as _Blueprint
from webargs.flaskparser import FlaskParser

from arceus.errors import ArceusError, ConfigError, Conflict, NotFound, PartitionError, UpstreamError

__all__ = ["ArceusApi", "BadRequestParser", "Blueprint", "register_error_handlers"]


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
            sub = path if key in ("json", "_schema") else (f"{path}.{key}" if path else str(key))
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
        return payload, code, headers


def _json(status: int, message: str, **extra: object):
    names = {400: "Bad Request", 404: "Not Found", 409: "Conflict", 502: "Bad Gateway", 504: "Gateway Timeout"}
    return {"code": status, "status": names.get(status, "Error"), "message": message, **extra}, status


def register_error_handlers(app: Flask) -> None:
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
