"""A small HTTP client for the Arceus REST API (stdlib only; used by the CLI)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ..errors import ApiError
from ..tensorfile import write_atomic

__all__ = ["ApiClient"]


class ApiClient:
    def __init__(self, base_url: str, timeout_s: float = 120.0, token: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: object = None, raw: bytes | None = None) -> tuple[int, dict]:
        """``(status, JSON body)`` whatever the status; ``ApiError`` only when the API cannot be reached."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=self.headers)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                reply = json.loads(payload)
            except ValueError:
                reply = None
            if not isinstance(reply, dict) or not reply.get("message"):  # not the API's own JSON error
                reply = {"message": f"{e.reason}: {payload.decode(errors='replace')[:200]}".rstrip(": ")}
            return e.code, reply
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(f"cannot reach the Arceus API at {self.base}: {getattr(e, 'reason', e)}") from None

    def call(self, method: str, path: str, body: object = None) -> dict:
        """The JSON body of a successful answer; ``ApiError`` naming the status and the API's message otherwise."""
        status, reply = self.request(method, path, body)
        if status >= 400:
            raise ApiError(f"{method} {path}: {status} {reply['message']}", status)
        return reply

    def download(self, path: str, dest: Path) -> int:
        """Stream a binary answer into ``dest`` (whole or not at all); returns its size in bytes."""
        req = urllib.request.Request(self.base + path, method="GET", headers=self.headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                write_atomic(dest, iter(lambda: resp.read(1 << 20), b""))
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise ApiError(f"GET {path}: {e.code} {message}", e.code) from None
        except (urllib.error.URLError, OSError) as e:
            raise ApiError(f"cannot download {self.base + path}: {getattr(e, 'reason', e)}") from None
        return dest.stat().st_size

    def events(self, path: str, after: str | None = None, read_timeout_s: float = 60.0) -> Iterator[dict]:
        """The Server-Sent Events of ``path`` (each event's JSON data), until an ``end`` event. A
        feed that closes early (the API ends feeds after a while, or restarted) is opened again
        from the last event's id, as a browser's EventSource does."""
        last, failures = after, 0
        while True:
            headers = {**self.headers, "Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = last
            req = urllib.request.Request(self.base + path, method="GET", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=read_timeout_s) as resp:
                    failures = 0
                    data: list[str] = []
                    event_id = None
                    for raw in resp:
                        line = raw.decode().rstrip("\r\n")
                        if line.startswith("data:"):
                            data.append(line[5:].removeprefix(" "))
                        elif line.startswith("id:"):
                            event_id = line[3:].strip()
                        elif not line and data:  # a blank line ends an event
                            event = json.loads("\n".join(data))
                            last, data = event_id or last, []
                            yield event
                            if event.get("type") == "end":
                                return
            except urllib.error.HTTPError as e:
                try:
                    message = json.loads(e.read())["message"]
                except (ValueError, KeyError, TypeError):
                    message = e.reason
                if e.code != 503:
                    raise ApiError(f"GET {path}: {e.code} {message}", e.code) from None
                failures += 1  # too many feeds open, or Redis away: a while later
                if failures > 10:
                    raise ApiError(f"GET {path}: {e.code} {message}", e.code) from None
            except (urllib.error.URLError, OSError) as e:
                failures += 1
                if failures > 10:
                    raise ApiError(f"lost the feed of {self.base + path}: {getattr(e, 'reason', e)}") from None
            time.sleep(min(2.0 * failures, 10.0))

    def get(self, path: str) -> dict:
        return self.call("GET", path)

    def post(self, path: str, body: object = None) -> dict:
        return self.call("POST", path, body)

    def delete(self, path: str) -> dict:
        return self.call("DELETE", path)
