import pytest

from arceus.config import SEED_JOB, JobConfig, TrainConfig
from arceus.errors import ConfigError


def test_seed_job_parses_and_round_trips():
    job = JobConfig.parse(SEED_JOB)
    assert job.model.layer_sizes == (784, 128, 64, 10)
    # layer_sizes expands to flatten, then linear/relu pairs: three layers with parameters.
    assert [layer.type for layer in job.layers] == ["flatten", "linear", "relu", "linear", "relu", "linear"]
    assert [layer.params for layer in job.layers if layer.params] == [784 * 128 + 128, 128 * 64 + 64, 64 * 10 + 10]
    assert job.dataset.batch_size == 256 and job.dataset.mean == (0.1307,)
    assert JobConfig.parse(job.to_dict()) == job


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model_config": {"layer_sizes": [784]}, "dataset_config": {}}, "model_config.layer_sizes"),
        ({"model_config": {"layer_sizes": [784, 0, 10]}}, "model_config.layer_sizes[1]"),
        ({"model_config": {"layer_sizes": [784, "x"]}}, "model_config.layer_sizes[1]"),
        ({"model_config": {"layer_sizes": [4, 2]}, "dataset_config": {"name": "CIFAR"}}, "dataset_config.name"),
        ({"model_config": {"layer_sizes": [4, 2]}, "dataset_config": {"batch_size": 0}}, "dataset_config.batch_size"),
        ({"model_config": {"layer_sizes": [4, 2]}, "extra": 1}, "job.extra"),
        ({"dataset_config": {}}, "model_config"),
        (
            {"model_config": {"layer_sizes": [4, 2]}, "dataset_config": {"normalize": {"mean": [0], "std": [0]}}},
            "dataset_config.normalize.std[0]",
        ),
    ],
)
def test_bad_job_configs_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        JobConfig.parse(raw)
    assert e.value.field == field


@pytest.mark.parametrize(
    ("raw", "field"),
    [({"epochs": 0}, "epochs"), ({"learning_rate": -1}, "learning_rate"), ({"wire": "int4"}, "wire"),
     ({"micro_batches": 0}, "micro_batches"), ({"schedule": "zb"}, "schedule"), ({"bogus": 1}, "train_config.bogus")],
)  # fmt: skip
def test_bad_train_configs_name_the_field(raw, field):
    with pytest.raises(ConfigError) as e:
        TrainConfig.parse(raw)
    assert e.value.field == field


def test_training_defaults_have_one_source():
    """TrainConfig, the API's schema and the CLI's flags all come from config.TRAIN_OPTIONS."""
    from api.schemas import TrainSchema
    from arceus.cli import _parser
    from arceus.cli.options import train_config

    assert TrainSchema().load({}) == TrainConfig().to_dict()
    assert train_config(_parser().parse_args(["train"])) == TrainConfig()
    demo = _parser().parse_args(["demo"])
    assert (demo.epochs, demo.learning_rate, demo.wire) == (10, 0.1, "auto")
    # A value out of range is refused the same way by all three.
    with pytest.raises(ConfigError, match="micro_batches: must be between 1 and 1024"):
        train_config(_parser().parse_args(["train", "--micro-batches", "0"]))
    assert set(TrainSchema().validate({"micro_batches": 0})) == {"micro_batches"}
    assert set(TrainSchema().validate({"learning_rate": 0})) == {"learning_rate"}  # > 0, as TrainConfig


def test_name_tables_match_their_registries():
    from arceus.config import SCHEDULES, WIRE_CODECS
    from arceus.plan.schedule import SCHEDULES as SCHEDULE_FUNCTIONS
    from arceus.wire import CODECS
    from arceus.wire.codecs import BlockInt8

    assert set(WIRE_CODECS.values()) <= set(CODECS)
    assert SCHEDULES == tuple(SCHEDULE_FUNCTIONS)
    # The codec registered as int8 is what BlockInt8() makes by default.
    default, registered = BlockInt8(), CODECS["int8"]
    assert (default.block, default.asymmetric) == (registered.block, registered.asymmetric) == (64, True)


def test_settings_come_from_the_environment_and_go_back_to_it(tmp_path):
    from arceus.settings import Settings

    env = {"ARCEUS_REDIS_URL": "redis://h:1/0", "ARCEUS_DATA_DIR": str(tmp_path), "ARCEUS_THREADS": "2",
           "ARCEUS_DEVICE": "cpu", "ARCEUS_RECV_TIMEOUT": "7.5", "ARCEUS_DOWNLOAD": "1",
           "ARCEUS_API_URL": "http://h:4000", "ARCEUS_REDIS_SERVER": "/opt/redis-server"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.redis_url, s.data_dir, s.threads, s.device, s.recv_timeout_s, s.download) == (
        "redis://h:1/0", tmp_path, 2, "cpu", 7.5, True
    )  # fmt: skip
    assert (s.api_url, s.redis_server) == ("http://h:4000", "/opt/redis-server")
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({}) == Settings()
    with pytest.raises(ConfigError, match="ARCEUS_THREADS: must be a number, got 'many'"):
        Settings.from_env({"ARCEUS_THREADS": "many"})


def test_a_child_process_gets_exactly_our_settings(monkeypatch):
    import os

    from arceus.launch.procs import child_environment
    from arceus.settings import Settings

    monkeypatch.setenv("ARCEUS_THREADS", "9")  # inherited, but not one of the settings we hand on
    monkeypatch.setenv("ARCEUS_DEVICE", "mps")
    env = child_environment(Settings(redis_url="redis://h:1/0", device="cpu"))
    assert "ARCEUS_THREADS" not in env and env["ARCEUS_DEVICE"] == "cpu"
    assert env["ARCEUS_REDIS_URL"] == "redis://h:1/0" and env["PATH"] == os.environ["PATH"]
    assert Settings.from_env(env) == Settings(redis_url="redis://h:1/0", device="cpu")
