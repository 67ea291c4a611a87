import pytest

from arceus.config import SEED_JOB, JobConfig, TrainConfig
from arceus.errors import ConfigError


def test_seed_job_parses_and_round_trips():
    job = JobConfig.parse(SEED_JOB)
    assert job.model.layer_sizes == (784, 128, 64, 10)
    assert job.model.num_layers == 3
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
