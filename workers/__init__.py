"""Celery entry point: ``celery -A workers worker -Q device-N`` runs device N.

The broker and result backend are ``ARCEUS_REDIS_URL`` (default redis://127.0.0.1:6379/0).
"""

from arceus.settings import Settings

from .app import DEFAULT_REDIS_URL, LOAD_SHARD, RUN_STAGE, UNLOAD_SHARD, make_celery

app = make_celery(Settings.from_env())

__all__ = ["DEFAULT_REDIS_URL", "LOAD_SHARD", "RUN_STAGE", "UNLOAD_SHARD", "app", "make_celery"]
