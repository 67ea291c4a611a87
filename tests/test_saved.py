import weakref

import torch

from arceus.engine.saved import SavedTensorMeter


def test_meter_counts_saved_activations_once_and_releases_them_after_backward():
    layer = torch.nn.Linear(32, 16)
    meter = SavedTensorMeter(layer.parameters())
    x = torch.randn(8, 32, requires_grad=True)
    with meter.counting():
        h = torch.relu(layer(x))  # linear keeps x (its weight is a parameter: not counted); relu keeps h
        out = (h * 2).sum()  # a product by a number keeps nothing
    assert meter.now == x.numel() * 4 + h.numel() * 4
    with meter.counting():
        again = torch.relu(layer(x)).sum()  # x is held once however many ops keep it
    assert meter.now == 2 * x.numel() * 4 + 2 * h.numel() * 4 - x.numel() * 4
    out.backward()
    again.backward()
    del out, again, h
    assert meter.now == 0


def test_a_graph_dropped_without_backward_releases_what_it_saved():
    layer = torch.nn.Linear(16, 16)
    meter = SavedTensorMeter(layer.parameters())
    with meter.counting():
        y = torch.sigmoid(layer(torch.randn(4, 16)))  # sigmoid keeps its own output
    assert meter.now > 0
    ref = weakref.ref(y)
    del y  # an aborted step: no backward
    assert ref() is None and meter.now == 0
