"""Celery lifecycle tasks for the devices' workers.

``celery -A workers worker -Q device-N`` runs device N: Celery finds the app in
``workers/celery.py``, built from the environment (``ARCEUS_REDIS_URL``, default
redis://127.0.0.1:6379/0). Importing this package builds no app: the API makes its own
with ``make_celery`` and sends tasks by name.
"""

from .factory import DEFAULT_REDIS_URL, LOAD_SHARD, MEASURE_UNITS, RUN_STAGE, UNLOAD_SHARD, make_celery

__all__ = ["DEFAULT_REDIS_URL", "LOAD_SHARD", "MEASURE_UNITS", "RUN_STAGE", "UNLOAD_SHARD", "make_celery"]
