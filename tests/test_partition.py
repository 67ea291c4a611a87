import pytest

from arceus.errors import PartitionError
from arceus.plan.layers import Layer, SampleShape
from arceus.plan.partition import partition, plan, units


@pytest.mark.parametrize(
    ("layers", "devices", "expected"),
    [
        (3, 1, [(0, 3)]),
        (3, 3, [(0, 1), (1, 2), (2, 3)]),
        (3, 2, [(0, 2), (2, 3)]),
        (4, 2, [(0, 2), (2, 4)]),
        (5, 3, [(0, 2), (2, 4), (4, 5)]),
        (7, 3, [(0, 3), (3, 5), (5, 7)]),
        (10, 4, [(0, 3), (3, 6), (6, 8), (8, 10)]),
        (1, 1, [(0, 1)]),
    ],
)
def test_partition_tables(layers, devices, expected):
    assert partition(layers, devices) == expected


@pytest.mark.parametrize("layers", range(1, 13))
def test_partition_covers_every_layer_once(layers):
    for devices in range(1, layers + 1):
        ranges = partition(layers, devices)
        assert [i for s, e in ranges for i in range(s, e)] == list(range(layers))
        sizes = [e - s for s, e in ranges]
        assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize(("layers", "devices"), [(3, 4), (3, 0), (3, -1), (1, 2)])
def test_partition_rejects_bad_device_counts(layers, devices):
    with pytest.raises(PartitionError, match=rf"L={layers} layers over D={devices} devices"):
        partition(layers, devices)


def _layers(*types: str) -> list[Layer]:
    with_params = {"linear", "conv2d", "layernorm"}
    return [Layer(i, {"type": t}, SampleShape((1,)), SampleShape((1,)), 10 * (t in with_params), 0)
            for i, t in enumerate(types)]  # fmt: skip


def test_plan_is_plain_data_with_devices():
    shards = plan(_layers("linear", "relu", "linear", "relu", "linear"), [7, 9])
    assert [s.to_dict() for s in shards] == [
        {"stage": 0, "start_layer": 0, "end_layer": 4, "device_id": 7},
        {"stage": 1, "start_layer": 4, "end_layer": 5, "device_id": 9},
    ]


def test_layers_without_parameters_stay_with_the_layer_before_them():
    layers = _layers("flatten", "conv2d", "relu", "maxpool2d", "conv2d", "relu", "dropout", "flatten", "linear")
    assert units(layers) == [(0, 4), (4, 8), (8, 9)]  # leading parameterless layers join the first
    assert [(s.start_layer, s.end_layer) for s in plan(layers, 3)] == [(0, 4), (4, 8), (8, 9)]
    with pytest.raises(PartitionError, match="L=3 layers over D=4 devices"):
        plan(layers, 4)  # D is at most the number of layers with parameters
