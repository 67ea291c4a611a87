"""Fixtures: one real redis-server per test session (flushed per test), IDX dataset files."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
import redis

from arceus import keys
from arceus.engine.idx import write_synthetic_mnist
from arceus.launch.redis_server import EmbeddedRedis
from arceus.settings import Settings

# A runner started in the background (``cmd &`` without job control, some CI agents) ignores
# SIGINT, and the processes it starts inherit that: the Ctrl-C tests would then send a
# signal nobody hears. With a handler here, processes started from the tests get the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Checkpoints of every process the tests start go to a throwaway home, never the user's.
_HOME = tempfile.mkdtemp(prefix="arceus-test-home-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["ARCEUS_HOME"] = _HOME
# No test depends on the network: a missing dataset is never downloaded.
os.environ["ARCEUS_DOWNLOAD"] = "0"


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis(binary=Settings.from_env().redis_server) as server:
        yield server


@pytest.fixture
def redis_url(redis_server) -> str:
    r = redis.Redis.from_url(redis_server.url)
    r.flushall()
    r.close()
    return redis_server.url


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def settings(tmp_path) -> Settings:
    # Short timeouts so a broken pipeline fails a test in seconds, not minutes.
    return Settings(data_dir=tmp_path / "data", home=tmp_path / "home", recv_timeout_s=30.0, download=False)


def write_mnist(root: Path, name: str = "MNIST", n_train: int = 6000, n_val: int = 1000) -> None:
    write_synthetic_mnist(root, name, n_train, n_val)


# Celery's own bookkeeping in Redis: bindings, task results, unacknowledged tasks.
CELERY_KEYS = ("_kombu.", "celery-task-meta-", "unacked")


def unlisted_keys(r: redis.Redis) -> list[str]:
    """Keys in Redis that ``arceus.keys.LAYOUT`` does not list (Celery's own left out)."""
    found = (k.decode() for k in r.scan_iter(count=1000))
    return [k for k in found if keys.describe(k) is None and not k.startswith(CELERY_KEYS)]


WORDS = ("the cat dog sat ran on a mat log red big small and then it was happy sad bird tree sun "
         "over under quickly slowly").split()  # fmt: skip


def write_corpus(path: Path, n_bytes: int = 60_000, seed: int = 0) -> float:
    """A learnable text: sentences of 4 to 9 words from a small vocabulary, each word more likely
    after some than others. Returns its unigram (byte) entropy in nats, the loss to beat."""
    import math
    import random

    rng = random.Random(seed)
    follow = {w: rng.sample(WORDS, 5) for w in WORDS}  # each word has five likely successors
    out, word = [], rng.choice(WORDS)
    while sum(len(s) for s in out) < n_bytes:
        words = [word]
        for _ in range(rng.randint(3, 8)):
            word = rng.choice(follow[word]) if rng.random() < 0.9 else rng.choice(WORDS)
            words.append(word)
        out.append(" ".join(words).capitalize() + ". ")
    text = "".join(out)[:n_bytes].encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    counts = [text.count(bytes([b])) for b in set(text)]
    return -sum(c / len(text) * math.log(c / len(text)) for c in counts)
