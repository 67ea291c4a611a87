import pytest

from arceus.config import SEED_JOB, JobConfig, TrainConfig
from arceus.errors import ConfigError, PartitionError
from arceus.plan.layers import Layer, SampleShape
from arceus.plan.partition import StageAssignment, assign, memory_bytes, partition, plan, units
from arceus.plan.runspec import RunSpec


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
    # Zero FLOPs everywhere: the tie goes to the earlier stage, which takes the extra layer.
    assert [s.to_dict() for s in shards] == [
        {"stage": 0, "start_layer": 0, "end_layer": 4, "device_id": 7, "params": 20, "flops": 0, "memory_bytes": 336,
         "expected_ms": None, "link": None},
        {"stage": 1, "start_layer": 4, "end_layer": 5, "device_id": 9, "params": 10, "flops": 0, "memory_bytes": 164,
         "expected_ms": None, "link": None},
    ]  # fmt: skip
    assert [StageAssignment.from_dict(s.to_dict()) for s in shards] == shards


def test_layers_without_parameters_stay_with_the_layer_before_them():
    layers = _layers("flatten", "conv2d", "relu", "maxpool2d", "conv2d", "relu", "dropout", "flatten", "linear")
    assert units(layers) == [(0, 4), (4, 8), (8, 9)]  # leading parameterless layers join the first
    assert [(s.start_layer, s.end_layer) for s in plan(layers, 3)] == [(0, 4), (4, 8), (8, 9)]
    with pytest.raises(PartitionError, match="L=3 layers over D=4 devices"):
        plan(layers, 4)  # D is at most the number of layers with parameters


def _costly(flops: list[int]) -> list[Layer]:
    return [Layer(i, {"type": "linear"}, SampleShape((4,)), SampleShape((4,)), 10, f) for i, f in enumerate(flops)]


def test_a_layer_ten_times_dearer_than_the_others_gets_a_stage_of_its_own():
    layers = _costly([1000, 100, 100, 100, 100, 100])
    assert [(s.start_layer, s.end_layer) for s in plan(layers, 2)] == [(0, 1), (1, 6)]
    assert [(s.start_layer, s.end_layer) for s in plan(layers, 3)] == [(0, 1), (1, 4), (4, 6)]
    # By layer count, the first stage would have held three of them: ten times the others' work
    # beside them. The plan reports what each stage holds.
    assert [s.flops for s in plan(layers, 2)] == [2000, 3 * 500]  # the first needs no input gradient
    assert [s.params for s in plan(layers, 2)] == [10, 50]


def test_assign_gives_any_unit_ranges_the_plans_estimates():
    layers = _costly([1000, 100, 100, 100, 100, 100])
    equal = assign(layers, partition(len(units(layers)), 2), [7, 8])  # what the benchmarks compare with
    assert [(s.start_layer, s.end_layer, s.device_id) for s in equal] == [(0, 3, 7), (3, 6, 8)]
    assert [s.flops for s in equal] == [2000 + 2 * 300, 3 * 300]
    assert assign(layers, [(0, 1), (1, 6)], [0, 1]) == plan(layers, 2)
    with pytest.raises(ConfigError, match="3 stage assignments for a run of 2 stages"):
        RunSpec.new(JobConfig.parse(SEED_JOB), TrainConfig(), 2, stages=plan(JobConfig.parse(SEED_JOB).layers, 3))


def test_equal_costs_give_earlier_stages_the_extra_layer():
    assert [(s.start_layer, s.end_layer) for s in plan(_costly([10] * 5), 2)] == [(0, 3), (3, 5)]


def test_memory_the_devices_reported_bounds_the_plan_and_a_plan_that_cannot_fit_names_the_device():
    layers = _costly([1000, 100, 100, 100, 100, 100])
    need = memory_bytes(layers, 1, 6, rows=8)  # the cheap layers' stage
    assert need == 4 * 50 * 4 + 4 * 8 * 5 * 4
    # The second device is too small for five layers: the plan moves work to the first one.
    fitted = plan(layers, [7, 9], capacities=[None, memory_bytes(layers, 2, 6, rows=8)], rows=8)
    assert [(s.start_layer, s.end_layer, s.device_id) for s in fitted] == [(0, 2, 7), (2, 6, 9)]
    with pytest.raises(PartitionError, match=r"device 9 reported 0.0 MiB, but stage 1 \(layers \[1, 6\)\) needs"):
        plan(layers, [7, 9], capacities=[memory_bytes(layers, 0, 1, rows=8), 100], rows=8)


def _slowest_ms(shards) -> float:
    return max(s.expected_ms for s in shards)


def test_a_plan_divides_each_stage_by_its_devices_speed_and_orders_the_devices():
    layers = _costly([1000, 100, 100, 100, 100, 100])  # training FLOPs a sample: 2000, then 300 each
    blind = plan(layers, [7, 8, 9], rows=8)
    assert [(s.start_layer, s.end_layer, s.device_id) for s in blind] == [(0, 1, 7), (1, 4, 8), (4, 6, 9)]
    # Equal speeds: the same plan, in the devices' order, with each stage's expected compute time.
    same = plan(layers, [7, 8, 9], rows=8, gflops=[1.0, 1.0, 1.0])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in same] == [(0, 1, 7), (1, 4, 8), (4, 6, 9)]
    assert [s.expected_ms for s in same] == pytest.approx([2000 * 8 / 1e6, 900 * 8 / 1e6, 600 * 8 / 1e6], rel=1e-3)
    # Device 9 at half speed: stage 0 stays the slowest (2000 against 600 / 0.5), so nothing moves.
    half = plan(layers, [7, 8, 9], rows=8, gflops=[1.0, 1.0, 0.5])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in half] == [(0, 1, 7), (1, 4, 8), (4, 6, 9)]
    # At a quarter, it would be the slowest (600 / 0.25): it gives device 8 a layer.
    quarter = plan(layers, [7, 8, 9], rows=8, gflops=[1.0, 1.0, 0.25])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in quarter] == [(0, 1, 7), (1, 5, 8), (5, 6, 9)]
    # Speeds within 10% of each other (two like machines, measured) never move work.
    noisy = plan(layers, [7, 8, 9], rows=8, gflops=[0.95, 1.05, 1.0])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in noisy] == [(0, 1, 7), (1, 4, 8), (4, 6, 9)]
    # Device 7 at half speed would be the bottleneck holding layer 0: the plan moves it off that layer.
    slow_first = plan(layers, [7, 8, 9], rows=8, gflops=[0.5, 1.0, 1.0])
    assert [s.device_id for s in slow_first] == [8, 7, 9]
    assert [(s.start_layer, s.end_layer) for s in slow_first] == [(0, 1), (1, 2), (2, 6)]
    blind_on_those = assign(layers, [(0, 1), (1, 4), (4, 6)], [7, 8, 9], 8, [0.5, 1.0, 1.0])
    assert _slowest_ms(slow_first) == pytest.approx(2000 * 8 / 1e6, rel=1e-3)
    assert _slowest_ms(slow_first) < _slowest_ms(blind_on_those) / 1.9


def test_a_fast_device_without_the_memory_for_a_range_does_not_get_it():
    layers = _costly([1000, 100, 100, 100, 100, 100])
    # Device 7 is four times as fast: with room for it, it takes four layers.
    roomy = plan(layers, [7, 8], rows=8, gflops=[4.0, 1.0])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in roomy] == [(0, 4, 7), (4, 6, 8)]
    one_layer = memory_bytes(layers, 0, 1, rows=8)  # every layer here needs as much
    shards = plan(layers, [7, 8], capacities=[one_layer, None], rows=8, gflops=[4.0, 1.0])
    assert [(s.start_layer, s.end_layer, s.device_id) for s in shards] == [(0, 1, 7), (1, 6, 8)]
    assert shards[0].memory_bytes <= one_layer


def test_a_speed_not_reported_by_every_device_is_not_used():
    layers = _costly([1000, 100, 100, 100, 100, 100])
    assert plan(layers, [7, 8, 9], rows=8, gflops=[1.0, None, 0.5]) == plan(layers, [7, 8, 9], rows=8)
    assert all(s.expected_ms is None for s in plan(layers, [7, 8, 9], rows=8, gflops=[1.0, None, 0.5]))


def test_measured_unit_costs_replace_flops_in_the_split_and_the_estimates():
    layers = _costly([100] * 6)  # the same FLOPs each: by FLOPs, three and three
    assert [(s.start_layer, s.end_layer) for s in plan(layers, 2)] == [(0, 3), (3, 6)]
    # Measured, the first runs at a tenth of matmul speed (a memory-bound convolution does).
    measured = [2000.0, 300.0, 300.0, 300.0, 300.0, 300.0]
    shards = plan(layers, [7, 8], rows=8, gflops=[1.0, 1.0], unit_costs=measured)
    assert [(s.start_layer, s.end_layer) for s in shards] == [(0, 1), (1, 6)]
    assert [s.expected_ms for s in shards] == pytest.approx([2000 * 8 / 1e6, 1500 * 8 / 1e6], rel=1e-3)
    assert [s.flops for s in shards] == [200, 5 * 300]  # the FLOPs are still FLOPs
    with pytest.raises(PartitionError, match="6 numbers >= 0, one per unit"):
        plan(layers, 2, unit_costs=measured[:5])
    with pytest.raises(PartitionError, match="6 numbers >= 0"):
        plan(layers, 2, unit_costs=[float("nan"), *measured[1:]])
