"""A small HTTP client for the Arceus REST API (stdlib only; used by the CLI)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from .errors import ArceusError

__all__ = ["ApiClient", "ApiError"]


class ApiError(ArceusError):
    """The API answered with an error status, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ApiClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: object = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("message", e.reason)
            except ValueError:
                message = e.reason
            raise ApiError(f"{method} {path}: {e.code} {message}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(f"cannot reach the Arceus API at {self.base}: {getattr(e, 'reason', e)}") from None

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: object = None) -> dict:
        return self.call("POST", path, body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)
