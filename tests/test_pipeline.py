"""End to end: stage processes talking through a real Redis, checked against one process."""

import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace

import pytest
import redis
import torch
from conftest import write_mnist

from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
from arceus.engine.data import load_dataset
from arceus.engine.reference import train_reference
from arceus.errors import RunFailed
from arceus.events import EventLog
from arceus.launch.redis_server import EmbeddedRedis
from arceus.launch.stages import _stage_process, train_local
from arceus.liveness import RunLiveness
from arceus.plan.runspec import RunSpec
from arceus.wire import encode


@pytest.fixture
def mnist_dir(settings):
    # 1630 = 25 batches of 64 and a short one of 30: the last batch's weighting is checked too.
    write_mnist(settings.data_dir, n_train=1630, n_val=400)
    return settings.data_dir


def _job(sizes, batch_size=64):
    return JobConfig(ModelConfig(tuple(sizes)), DatasetConfig(name="MNIST", batch_size=batch_size, val_batch_size=100))


def _reference(job, train, data_dir):
    data = load_dataset(job.dataset, data_dir)
    return train_reference(job.model, data, train, job.dataset.batch_size, job.dataset.val_batch_size)


@pytest.mark.parametrize(
    ("sizes", "stages", "micro_batches", "schedule"),
    [
        ([784, 128, 64, 10], 3, 1, "gpipe"),
        ([784, 128, 64, 10], 3, 4, "gpipe"),
        ([784, 64, 48, 32, 10], 2, 3, "gpipe"),
        ([784, 128, 64, 10], 3, 4, "1f1b"),
        ([784, 64, 48, 32, 10], 4, 6, "1f1b"),
    ],
)
def test_lossless_pipeline_equals_single_process(
    redis_url, settings, mnist_dir, sizes, stages, micro_batches, schedule
):
    job = _job(sizes)
    train = TrainConfig(
        epochs=1, learning_rate=0.05, momentum=0.5, micro_batches=micro_batches, wire="fp32", seed=5,
        schedule=schedule,
    )  # fmt: skip
    result = train_local(job, train, stages, redis_url, settings, keep_weights=True)
    model, history = _reference(job, train, mnist_dir)
    assert len(result.epochs) == 1
    assert result.epochs[0]["samples"] == 1630  # 26 optimizer steps
    ref = model.state_dict()
    assert set(result.weights) == set(ref)
    for name, tensor in ref.items():
        torch.testing.assert_close(result.weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
        assert result.epochs[0][key] == pytest.approx(history[0][key], rel=1e-4, abs=1e-5), key


def test_1f1b_bounds_the_activations_each_stage_keeps(redis_url, settings, mnist_dir):
    """GPipe keeps every micro-batch's activations until the backwards start; 1F1B keeps at
    most min(D - s, M) on stage s. Measured as the bytes autograd held for backward."""
    peaks = {}
    for schedule in ("gpipe", "1f1b"):
        train = TrainConfig(epochs=1, micro_batches=6, schedule=schedule)
        result = train_local(_job([784, 64, 64, 10], batch_size=96), train, 3, redis_url, settings)
        peaks[schedule] = {s["stage"]: (s["max_in_flight"], s["peak_saved_mb"]) for s in result.stages}
    for stage, held in ((0, 3), (1, 2), (2, 1)):
        assert peaks["gpipe"][stage][0] == 6 and peaks["1f1b"][stage][0] == held
    for stage, held in ((1, 2), (2, 1)):
        ratio = peaks["gpipe"][stage][1] / peaks["1f1b"][stage][1]
        assert ratio == pytest.approx(6 / held, rel=0.05), (stage, peaks)
    # Stage 0's inputs are views of the batch, which it holds whole under either schedule;
    # only its outputs depend on the schedule.
    assert peaks["gpipe"][0][1] > peaks["1f1b"][0][1]


def test_int8_pipeline_reaches_reference_accuracy(redis_url, settings):
    write_mnist(settings.data_dir)  # 6,000 train / 1,000 validation samples
    job = _job([784, 128, 64, 10], batch_size=256)
    job = JobConfig(job.model, DatasetConfig(name="MNIST", batch_size=256, val_batch_size=1000))
    train = TrainConfig(epochs=5, learning_rate=0.1, micro_batches=2, wire="int8")
    result = train_local(job, train, 3, redis_url, settings)
    _, history = _reference(job, train, settings.data_dir)
    ref_acc, acc = history[-1]["val_accuracy"], result.epochs[-1]["val_accuracy"]
    assert ref_acc > 0.9  # real learning: chance is 0.1
    assert abs(acc - ref_acc) <= 0.01, (acc, ref_acc)
    stages = [s for s in result.stages if s["epoch"] == 5]
    raw, wire = sum(s["bytes_raw"] for s in stages), sum(s["bytes_wire"] for s in stages)
    assert 3.3 < raw / wire < 4.0  # 8-bit codes plus one (min, step) pair per 64 values


def test_metrics_are_written_to_redis_as_they_happen(redis_url, settings, mnist_dir, r):
    seen = []
    train = TrainConfig(epochs=2, micro_batches=2)
    result = train_local(_job([784, 32, 10]), train, 2, redis_url, settings, on_event=seen.append)
    kinds = [e["type"] for e in seen]
    assert kinds.count("epoch") == 2 and kinds.count("stage_done") == 2
    # Wire auto: the link's wire was measured before the stages started, and stage 0 says which it sends.
    started = {e["stage"]: e for e in seen if e["type"] == "stage_started"}
    assert started[0]["wire"] == result.spec.stages[0].link["wire"] and "wire" not in started[1]
    steps = [e["step"] for e in seen if e["type"] == "progress"]
    assert steps and all(1 <= s <= 26 for s in steps)  # counted within the epoch
    stored = EventLog(r, result.spec.keys).all()
    epochs = [e for e in stored if e["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    for e in epochs:
        assert e["samples"] == 1630 and e["samples_per_s"] > 0 and 0 <= e["val_accuracy"] <= 1
    # Written as they happen: epoch 1's row predates epoch 2's training.
    assert epochs[0]["time"] <= epochs[1]["time"] - epochs[1]["seconds"]
    stage_rows = [e for e in stored if e["type"] == "stage"]
    assert {(e["stage"], e["epoch"]) for e in stage_rows} == {(0, 1), (1, 1), (0, 2), (1, 2)}
    for e in stage_rows:
        assert e["compute_s"] > 0 and e["bytes_wire"] > 0 and 0 < e["utilization"] < 1
        assert e["max_in_flight"] == 2 and e["peak_rss_mb"] > 50  # GPipe, M=2: both micro-batches held
        if e["stage"] == 1:
            assert e["wait_s"] > 0  # it can only wait for stage 0's activations
    # Nothing of the data plane is left behind once the run is over.
    assert not [k for k in r.scan_iter(result.spec.keys.pattern) if b":fwd:" in k or b":bwd:" in k]


def test_a_killed_stage_fails_the_run_with_a_reason(redis_url, settings, mnist_dir):
    killed = []

    def kill_stage_1(ev):
        if ev["type"] == "progress" and not killed:
            victim = next(p for p in mp.active_children() if p.name == "arceus-stage-1")
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.pid)

    train = TrainConfig(epochs=50, micro_batches=2)
    t0 = time.monotonic()
    with pytest.raises(RunFailed, match="stage 1 process exited with code -9"):
        train_local(_job([784, 64, 32, 10]), train, 3, redis_url, settings, on_event=kill_stage_1)
    assert killed and time.monotonic() - t0 < 60
    assert not [p for p in mp.active_children() if p.name.startswith("arceus-stage")]


def test_a_stage_that_cannot_start_fails_the_run_with_the_reason(redis_url, settings, mnist_dir, tmp_path):
    # A script without the `if __name__ == "__main__":` guard: each spawned stage runs it again, and
    # its own train_local cannot start a process. Python's advice must reach the user, not an
    # AssertionError from joining the stages that never started.
    script = tmp_path / "no_main_guard.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from arceus.config import DatasetConfig, JobConfig, ModelConfig, TrainConfig
        from arceus.launch.stages import train_local
        from arceus.settings import Settings
        job = JobConfig(ModelConfig((784, 32, 10)), DatasetConfig(name="MNIST", batch_size=64, val_batch_size=100))
        train_local(job, TrainConfig(epochs=1), 2, sys.argv[1], Settings(data_dir=sys.argv[2], download=False))
    """)
    )
    out = subprocess.run([sys.executable, str(script), redis_url, str(mnist_dir)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1, out.stderr[-2000:]
    # Whichever stage exits first is the one named: both fail the same way.
    assert re.search(r"RunFailed: stage \d process exited with code 1", out.stderr), out.stderr[-2000:]
    assert "if __name__ == '__main__':" in out.stderr
    assert "can only join a started process" not in out.stderr


GOOD_HEADER = b'{"kind":"train","epoch":0,"step":0,"i":0,"steps":1,"mb":0,"n_mb":1,"bs":4}'


def _x(rows, width, codec="int8"):
    return encode(torch.randn(rows, width), codec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"h": GOOD_HEADER, "x": b"ARCW\x01\x04int8\x01\x02\x04\x00"}, "PayloadError: .* truncated"),
        ({"x": _x(4, 32)}, "ProtocolError: .* no header field 'h'"),
        ({"h": b"{not json", "x": _x(4, 32)}, "ProtocolError: .* header is not JSON"),
        ({"h": b'{"kind": "steal"}'}, "ProtocolError: .* header kind 'steal'"),
        # A forged end while the run has epochs to go fails it at once (its neighbours abort too).
        ({"h": b'{"kind":"end"}'}, "ProtocolError: .* told to end after 0 of its 10 epochs"),
        ({"h": GOOD_HEADER.replace(b'"n_mb":1', b'"n_mb":1000000000'), "x": _x(4, 32)}, "field 'n_mb' must be"),
        ({"h": GOOD_HEADER.replace(b'"step":0,', b""), "x": _x(4, 32)}, "field 'step' must be"),
        ({"h": GOOD_HEADER.replace(b'"bs":4', b'"bs":"4"'), "x": _x(4, 32)}, "field 'bs' must be"),
        ({"h": GOOD_HEADER, "x": _x(4, 31)}, r"ProtocolError: .* float \(rows, 32\), got torch.float32 \[4, 31\]"),
        ({"h": GOOD_HEADER, "x": _x(9, 32)}, "micro-batch of 9 rows in a batch of 4"),
        ({"h": GOOD_HEADER, "x": _x(4, 32), "y": encode(torch.tensor([1, 2, 3, 99]), "raw")},
         r"labels must be 4 integers in \[0, 10\)"),
    ],
)  # fmt: skip
def test_malformed_stream_entry_fails_the_stage_clearly(redis_url, settings, r, fields, message):
    spec = RunSpec.new(_job([784, 32, 10]), TrainConfig(), 2)
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=_stage_process, args=(spec.to_dict(), 1, redis_url, replace(settings, threads=1)))
    p.start()
    r.incr(spec.keys.ready)  # stand in for stage 0 at the start barrier
    r.xadd(spec.keys.fwd(1), fields)
    p.join(timeout=60)
    assert p.exitcode == 1
    reason = RunLiveness(r, spec.keys).reason()
    assert reason.startswith("stage 1 (layers [3, 4)): ")  # flatten linear relu | linear
    assert re.search(message, reason), reason
    if "Payload" in message:
        assert f"of {spec.keys.fwd(1)}" in reason  # names the stream entry


def test_diverging_training_fails_with_advice(redis_url, settings, mnist_dir):
    # Inputs scaled by 1e6 and lr 100 overflow float32 within the first epoch.
    job = JobConfig(ModelConfig((784, 16, 16, 10)), DatasetConfig(name="MNIST", batch_size=64, std=(1e-6,)))
    for wire, message in (("fp32", "the loss is (nan|inf)"), ("int8", "are not finite")):
        train = TrainConfig(epochs=3, learning_rate=100.0, momentum=0.99, wire=wire)
        with pytest.raises(RunFailed, match=rf"TrainingDiverged: .*{message}.* lower learning_rate"):
            train_local(job, train, 2, redis_url, settings)


def test_single_stage_equals_reference(redis_url, settings, mnist_dir):
    job, train = _job([784, 32, 10]), TrainConfig(epochs=1, micro_batches=2, wire="fp32")
    result = train_local(job, train, 1, redis_url, settings, keep_weights=True)
    model, _ = _reference(job, train, mnist_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(result.weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_streams_can_live_in_each_receivers_own_redis(redis_url, settings, mnist_dir):
    """Per-receiver layout: the streams into stage s live in its data Redis (password-protected
    here), so a payload crosses the network once; control and events stay in the run's Redis.
    The result is the same training, to float rounding."""
    job = _job([784, 128, 64, 10])
    train = TrainConfig(epochs=1, learning_rate=0.05, momentum=0.5, micro_batches=2, wire="fp32", seed=5)
    seen: dict[str, set] = {"central": set(), "a": set(), "b": set()}
    with EmbeddedRedis(password="s3cret-a") as a, EmbeddedRedis(password="s3cret-b") as b:
        servers = {"central": redis.Redis.from_url(redis_url), "a": redis.Redis.from_url(a.url),
                   "b": redis.Redis.from_url(b.url)}  # fmt: skip

        def look(ev: dict) -> None:  # mid-run: which server holds which stream
            if ev["type"] == "progress":
                for name, client in servers.items():
                    seen[name] |= {":".join(k.decode().split(":")[-2:]) for pattern in ("*:fwd:*", "*:bwd:*")
                                   for k in client.scan_iter(pattern) if not k.endswith(b":credit")}  # fmt: skip

        result = train_local(job, train, 3, redis_url, settings, keep_weights=True, on_event=look,
                             data_urls=[None, a.url, b.url])  # fmt: skip
        assert seen == {"central": {"bwd:0"}, "a": {"fwd:1", "bwd:1"}, "b": {"fwd:2"}}
        # Each receiver dropped its streams when the run ended.
        assert not list(servers["a"].scan_iter("*")) and not list(servers["b"].scan_iter("*"))
        assert servers["central"].exists(result.spec.keys.events)  # the run's events stayed central
    model, history = _reference(job, train, mnist_dir)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(result.weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert result.spec.data_urls == (None, a.url, b.url)
