"""A job's live feed as Server-Sent Events: what the dashboard, ``arceus status --follow`` and
``curl -N`` read while a job trains."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import redis
from flask import Response, current_app, request
from flask.views import MethodView

from arceus.errors import UpstreamError
from arceus.events import FINAL_STATES, FeedCursor, JobFeed

from .errors import Blueprint
from .schemas import FeedQuerySchema

blp = Blueprint("events", __name__, url_prefix="/api", description="Live feeds")

# Each open feed holds one of the server's threads while it waits: at most this many at once,
# so feeds never take the threads other requests need.
MAX_FEEDS = 8
# A wait on Redis, under the client's socket timeout; an idle feed sends a comment this often,
# which also finds out a reader that has gone away.
BLOCK_MS = 5000
# A feed ends after this long; an EventSource reconnects by itself, from Last-Event-ID.
FEED_S = 300.0
# Read by the stage that sends its checkpoint; nobody watching needs them.
_INTERNAL = ("checkpoint_part",)

_open = threading.BoundedSemaphore(MAX_FEEDS)


@blp.route("/jobs/<job_id>/events")
class Events(MethodView):
    @blp.arguments(FeedQuerySchema, location="query")
    @blp.doc(
        parameters=[{"in": "header", "name": "Last-Event-ID", "schema": {"type": "string"},
                     "description": "resume after this event (an EventSource sends it when it reconnects)"}],
        responses={"200": {"description": "text/event-stream: each event's data is one JSON object whose `type` is "
                           "state (a status change), progress, epoch, stage (a stage's figures for an epoch), "
                           "stage_started, stage_done, error, or end (the job has finished and the feed "
                           "closes)", "content": {"text/event-stream": {}}},
                   "503": {"description": "too many feeds are open"}},
    )  # fmt: skip
    def get(self, query, job_id):
        """The job's events as they happen: every state change and its runs' progress, epochs and
        stage figures, from its beginning or after ``Last-Event-ID`` (or ``?after=``). Ends once the
        job has completed, failed or stopped and everything before is sent."""
        control = current_app.extensions["arceus"]
        job = control.store.get(job_id)  # 404 for an unknown job
        feed = JobFeed(control.r, job_id)
        given = request.headers.get("Last-Event-ID") or query["after"]
        cursor = FeedCursor.parse(given) if given else feed.beginning(job.get("run_id"))
        if not _open.acquire(blocking=False):
            raise UpstreamError(f"{MAX_FEEDS} live feeds are open, the most this API serves at once: try again "
                                "later, or read GET /api/jobs/<job_id>", 503)  # fmt: skip
        response = Response(
            _stream(feed, cursor, job["status"]),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        response.call_on_close(_open.release)
        return response


def _stream(feed: JobFeed, cursor: FeedCursor, status: str) -> Iterator[str]:
    yield "retry: 2000\n\n"
    deadline = time.monotonic() + FEED_S
    try:
        while time.monotonic() < deadline:
            # A finished job's feed only reads what is left; a live one waits for more.
            cursor, events = feed.read(cursor, block_ms=None if status in FINAL_STATES else BLOCK_MS)
            for at, event in events:
                if event["type"] == "state":
                    status = event["status"]
                if event["type"] not in _INTERNAL:
                    yield f"id: {at}\ndata: {json.dumps(event)}\n\n"
            if not events:
                if status in FINAL_STATES:
                    yield f"id: {cursor}\ndata: {json.dumps({'type': 'end', 'status': status})}\n\n"
                    return
                yield ": waiting\n\n"
    except redis.RedisError as e:  # the reader reconnects from its last event once Redis is back
        yield f"data: {json.dumps({'type': 'unavailable', 'reason': f'Redis: {e}'})}\n\n"
