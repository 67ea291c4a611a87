"""The Celery app, wired from Settings in one function (Flask's examples/celery pattern).

The API builds one to send tasks by name (it never imports the tasks, so never torch);
``workers/celery.py`` builds the workers' one from the environment.
"""

from __future__ import annotations

from celery import Celery

from arceus import keys
from arceus.settings import Settings

__all__ = ["DEFAULT_REDIS_URL", "LOAD_SHARD", "MEASURE_UNITS", "RUN_STAGE", "UNLOAD_SHARD", "make_celery"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Task names: the API sends tasks by name, so it never imports torch.
LOAD_SHARD = "arceus.load_shard"
MEASURE_UNITS = "arceus.measure_units"
RUN_STAGE = "arceus.run_stage"
UNLOAD_SHARD = "arceus.unload_shard"


def make_celery(settings: Settings) -> Celery:
    url = settings.redis_url or DEFAULT_REDIS_URL
    app = Celery("arceus", broker=url, backend=url, include=["workers.tasks"])
    app.conf.update(
        # JSON only: a task carries ids and small configs, never tensors, never pickles.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # A task is acknowledged when it finished; a lost worker's task is redelivered when a
        # worker serves its queue again (and skipped when its run is over: control/host.py).
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        # Redis redelivers an unacknowledged task after this long: longer than any run, so a
        # long stage is not started twice (a duplicate would also be skipped, see host.py).
        broker_transport_options={"visibility_timeout": keys.RUN_TTL_S},
        # One task at a time, in a thread of the worker process itself: the shard a
        # load_shard task builds stays in this process's memory for the run_stage task,
        # and the worker keeps answering heartbeats and Flower while a stage trains.
        worker_pool="threads",
        worker_concurrency=1,
        task_default_queue=keys.DEFAULT_QUEUE,
        result_expires=keys.RESULTS_TTL_S,
        broker_connection_retry_on_startup=True,
        worker_send_task_events=True,  # for Flower
        task_send_sent_event=True,
        task_track_started=True,
    )
    return app
