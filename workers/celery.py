"""Entry point of ``celery -A workers worker|flower``: the one module-level app, from the environment.

A worker that serves device queues (``-Q device-<id>``) holds those devices' leases with a
heartbeat (``arceus.control.devices.DeviceBeat``) from the moment it is ready until it shuts
down; with ``ARCEUS_PARENT_PID`` set (``arceus worker`` sets it), it also shuts down when that
process is gone, on any OS.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import redis
from celery.signals import worker_init, worker_ready, worker_shutdown, worker_shutting_down

from arceus.control.devices import DeviceBeat
from arceus.settings import Settings

from .factory import make_celery

log = logging.getLogger(__name__)

settings = Settings.from_env()
app = make_celery(settings)
_beat: DeviceBeat | None = None


def _device_ids(consumer) -> list[str]:
    names = list(consumer.app.amqp.queues.consume_from or {})
    return [n.removeprefix("device-") for n in names if n.startswith("device-")]


@worker_init.connect
def _start_watchdog(**_: object) -> None:
    if settings.parent_pid:  # from the start: a worker that never connects must not outlive its parent either
        threading.Thread(target=_watch_parent, args=(settings.parent_pid,), name="arceus-parent", daemon=True).start()


@worker_ready.connect
def _start_beat(sender=None, **_: object) -> None:
    global _beat
    ids = _device_ids(sender)
    if not ids:
        return
    import torch  # noqa: PLC0415 - workers only

    from arceus.engine.device import describe_machine  # noqa: PLC0415

    if settings.threads:  # measured as it will train (workers.tasks sets the same)
        torch.set_num_threads(settings.threads)
    info = {k: v for k, v in describe_machine(settings.device).items() if v is not None}
    if settings.data_redis_url:  # `arceus worker` started a Redis for the streams into this device
        info["data_url"] = settings.data_redis_url
    r = redis.Redis.from_url(sender.app.conf.broker_url, socket_timeout=10, socket_connect_timeout=10)
    _beat = DeviceBeat(r, ids, sender.hostname, info).start()
    log.info("holding the lease of device(s) %s", ", ".join(ids))


@worker_shutting_down.connect
def _give_up_stages(**_: object) -> None:
    """A warm shutdown waits for the running task, and a stage's task lasts its whole run: hand the
    run's stage over to a recovery instead, so the shutdown takes seconds."""
    from . import tasks  # noqa: PLC0415

    if tasks._host is not None:
        names = ", ".join(_beat.device_ids) if _beat is not None else "this device"
        tasks._host.give_up(f"the worker of device {names} is shutting down")


@worker_shutdown.connect
def _stop_beat(**_: object) -> None:
    if _beat is not None:
        _beat.stop()  # the devices are not live from now on: planning skips them at once


def _watch_parent(pid: int) -> None:
    """Shut down (warm: the lease is given up) once the process that started us is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != pid:
            log.warning("the process that started this worker (pid %d) is gone: shutting down", pid)
            os.kill(os.getpid(), signal.SIGTERM)
            return
