"""Entry point of ``celery -A workers worker|flower``: the one module-level app, from the environment."""

from arceus.settings import Settings

from .factory import make_celery

app = make_celery(Settings.from_env())
