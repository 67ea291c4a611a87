"""The Redis key layout is a protocol between processes: listed here, and checked against a run."""

from conftest import unlisted_keys, write_mnist

from arceus import keys
from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.keys import RunKeys
from arceus.launch.stages import train_local


def test_the_key_layout():
    run = RunKeys("j1", "r1")
    assert {
        "jobs": keys.JOBS,
        "job": keys.job("j1"),
        "job devices": keys.job_devices("j1"),
        "devices": keys.DEVICES,
        "device names": keys.DEVICE_NAMES,
        "active jobs": keys.ACTIVE_JOBS,
        "device": keys.device("a1b2c3"),
        "device beat": keys.device_beat("a1b2c3"),
        "device deleted": keys.device_deleted("a1b2c3"),
        "teraflops": keys.TERAFLOPS,
        "queue": keys.queue_for("a1b2c3"),
        "default queue": keys.DEFAULT_QUEUE,
        "run": run.prefix,
        "fwd": run.fwd(2),
        "bwd": run.bwd(1),
        "credit": keys.credit(run.fwd(2)),
        "events": run.events,
        "weights": run.weights,
        "abort": run.abort,
        "alive": run.alive(0),
        "ready": run.ready,
        "claimed": run.claimed(0),
        "grad norms": run.grad_norms,
        "checkpoint part": run.checkpoint_part(12, 1),
        "restore": keys.restore("j1", 2),
    } == {
        "jobs": "arceus:jobs",
        "job": "arceus:job:j1",
        "job devices": "arceus:job:j1:devices",
        "devices": "arceus:devices",
        "device names": "arceus:device-names",
        "active jobs": "arceus:jobs:active",
        "device": "arceus:device:a1b2c3",
        "device beat": "arceus:device:a1b2c3:beat",
        "device deleted": "arceus:device:a1b2c3:deleted",
        "teraflops": "arceus:teraflops",
        "queue": "device-a1b2c3",
        "default queue": "arceus",
        "run": "arceus:job:j1:run:r1",
        "fwd": "arceus:job:j1:run:r1:fwd:2",
        "bwd": "arceus:job:j1:run:r1:bwd:1",
        "credit": "arceus:job:j1:run:r1:fwd:2:credit",
        "events": "arceus:job:j1:run:r1:events",
        "weights": "arceus:job:j1:run:r1:weights",
        "abort": "arceus:job:j1:run:r1:abort",
        "alive": "arceus:job:j1:run:r1:alive:0",
        "ready": "arceus:job:j1:run:r1:ready",
        "claimed": "arceus:job:j1:run:r1:claimed:0",
        "grad norms": "arceus:job:j1:run:r1:gradnorms",
        "checkpoint part": "arceus:job:j1:run:r1:ckpt:12:1",
        "restore": "arceus:job:j1:restore:2",
    }
    # Every key above is in LAYOUT, under its own (most specific) meaning.
    assert keys.describe(run.fwd(2)) == "activations into a stage"
    assert keys.describe(keys.credit(run.bwd(0))) == "credits back to the sender of gradients"
    assert keys.describe(keys.device_beat("a1b2c3")) == "a device's lease (its worker's heartbeat)"
    assert keys.describe(keys.device("a1b2c3")) == "a device's JSON record"
    assert keys.describe(keys.job("j1")) == "a job's status, config, plan, run id, error"
    assert keys.describe(keys.restore("j1", 0)) == "the checkpoint slice a stage loads next"
    assert keys.describe("someone:else") is None


def test_a_run_writes_only_listed_keys(redis_url, settings, r):
    write_mnist(settings.data_dir, n_train=300, n_val=100)
    job = JobConfig(ModelConfig((784, 16, 10)), DatasetConfig(batch_size=100, val_batch_size=100))
    seen: set[str] = set()

    def snapshot(_event: dict) -> None:  # what Redis holds while the run is under way
        seen.update(k.decode() for k in r.scan_iter(count=1000))

    train_local(job, TrainConfig(epochs=1, micro_batches=2), 2, redis_url, settings, on_event=snapshot)
    assert not unlisted_keys(r)
    seen.update(k.decode() for k in r.scan_iter(count=1000))
    assert seen and not [k for k in seen if keys.describe(k) is None]
    assert {keys.describe(k) for k in seen} >= {"a run's events", "the start barrier", "a stage's heartbeat"}
