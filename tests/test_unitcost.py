"""engine.unitcost: each partition unit's cost, measured (the plans' cost model)."""

import json
import time
from pathlib import Path

from arceus.config import JobConfig
from arceus.engine.unitcost import measure
from arceus.plan.layers import train_flops_per_sample
from arceus.plan.partition import units

CNN = json.loads((Path(__file__).resolve().parents[1] / "examples" / "cnn_mnist.json").read_text())


def test_a_memory_bound_convolution_costs_more_than_its_flops_say():
    job = JobConfig.parse(CNN)
    costs = measure(job, budget_s=120)  # a busy machine only slows it; the test is about ratios
    groups = units(job.layers)
    assert len(costs) == len(groups) and all(c > 0 for c in costs)
    per_flop = [c / train_flops_per_sample(job.layers, a, b) for c, (a, b) in zip(costs, groups, strict=True)]
    # The first convolution (1 input channel) does little arithmetic per byte it moves; the
    # 64-channel convolution and the 3136-wide linear layer are closer to matmul speed.
    conv1, conv2, linear = per_flop[0], per_flop[1], per_flop[2]
    assert conv1 > 4 * max(conv2, linear)


def test_a_text_model_is_timed_with_token_ids_in_its_embeddings_range():
    gpt = JobConfig.parse(json.loads((Path(__file__).resolve().parents[1] / "examples" / "gpt_text.json").read_text()))
    costs = measure(gpt, budget_s=120)
    assert len(costs) == len(units(gpt.layers)) and all(c > 0 for c in costs)


def test_a_model_too_slow_to_time_within_the_budget_is_left_to_flops():
    # The FLOPs say so before a layer is built: 8192 x 8192 weights, seconds a pass on one thread.
    big = JobConfig.parse({"model_config": {"layer_sizes": [784, 8192, 8192, 10]},
                           "dataset_config": {"name": "MNIST", "batch_size": 64}})  # fmt: skip
    t0 = time.perf_counter()
    assert measure(big, budget_s=0.5) is None
    assert time.perf_counter() - t0 < 5  # matmul speed (0.2 s) and no layer built
