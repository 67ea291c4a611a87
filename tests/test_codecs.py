"""Codec round trips, error bounds on real-looking tensors, and malformed payloads."""

import struct

import pytest
import torch

from arceus.errors import PayloadError
from arceus.wire import CODECS, decode, encode, encode_parts
from arceus.wire.codecs import BlockInt8


def _tensors():
    g = torch.Generator().manual_seed(0)
    relu = torch.relu(torch.randn(256, 128, generator=g))  # activations: non-negative, many zeros
    # gradients: per-sample scales spread over 4 decades, as for well vs badly classified samples
    grads = torch.randn(256, 64, generator=g) * torch.logspace(-6, -2, 256).unsqueeze(1)
    odd = torch.randn(7, 13, 3, generator=g)  # numel not a multiple of the block
    return {"relu": relu, "grads": grads, "odd": odd, "zeros": torch.zeros(5, 64), "empty": torch.zeros(0, 128)}


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("name", list(_tensors()))
def test_round_trip_shape_dtype(codec, name):
    x = _tensors()[name]
    y = decode(encode(x, codec))
    assert y.shape == x.shape and y.dtype == x.dtype
    if CODECS[codec].lossless:
        assert torch.equal(x, y)


@pytest.mark.parametrize("codec", list(CODECS))
def test_parts_join_to_the_payload_and_raw_sends_the_tensors_own_memory(codec):
    x = _tensors()["relu"]
    head, body = encode_parts(x, codec)
    assert head + body.tobytes() == encode(x, codec)
    if codec == "raw":  # not a copy: the body is the tensor's memory
        assert body.nbytes == x.numel() * 4 and torch.frombuffer(body, dtype=torch.uint8).data_ptr() == x.data_ptr()


def test_raw_is_lossless_for_labels():
    y = torch.randint(0, 10, (300,))
    assert torch.equal(decode(encode(y, "raw")), y)
    assert torch.equal(decode(encode(y.to(torch.uint8), "raw")), y.to(torch.uint8))


def test_fp16_relative_error():
    for x in _tensors().values():
        if x.numel() and x.abs().max() > 1e-4:  # fp16 underflows below ~6e-8; not meant for tiny values
            y = decode(encode(x, "fp16"))
            assert (x - y).abs().max() <= 1e-3 * x.abs().max()


@pytest.mark.parametrize("asymmetric", [False, True])
def test_int8_error_bound_per_block(asymmetric):
    codec = BlockInt8(64, asymmetric)
    for x in _tensors().values():
        n = x.numel()
        y = codec.decode(memoryview(codec.encode(x.reshape(-1))), n, x.dtype)
        pad = (-n) % 64
        xb = torch.nn.functional.pad(x.reshape(-1), (0, pad)).view(-1, 64)
        err = torch.nn.functional.pad((x.reshape(-1) - y).abs(), (0, pad)).view(-1, 64).amax(dim=1)
        if asymmetric:
            bound = (xb.amax(dim=1) - xb.amin(dim=1)) / 510
        else:
            bound = xb.abs().amax(dim=1) / 254
        assert (err <= bound * 1.0001 + 1e-12).all()


def test_int8_keeps_tiny_gradients_of_each_sample():
    grads = _tensors()["grads"]
    y = decode(encode(grads, "int8"))
    rel = (grads - y).norm(dim=1) / grads.norm(dim=1)
    assert rel.max() < 0.01  # every sample's gradient within 1%, whatever its magnitude


def test_int8_size_is_about_a_quarter_of_fp32():
    x = _tensors()["relu"]
    assert len(encode(x, "int8")) / (x.numel() * 4) < 0.3


def _valid():
    return encode(torch.randn(4, 64), "int8")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:3], "truncated"),
        (lambda b: b[:-1], "truncated"),
        (lambda b: b + b"\0", "oversized"),
        (lambda b: b"XXXX" + b[4:], "magic"),
        (lambda b: b[:4] + b"\x09" + b[5:], "version 9"),
        (lambda b: b[:6] + b"zzzz" + b[10:], "unknown codec 'zzzz'"),
        (lambda b: b[:10] + b"\x63" + b[11:], "dtype code 99"),
        (lambda b: b[:11] + b"\x40" + b[12:], "64 dimensions"),
        (lambda b: b[:12] + struct.pack("<I", 5) + b[16:], "truncated: codec 'int8' needs"),
        (lambda b: b[:12] + struct.pack("<I", 3) + b[16:], "oversized: codec 'int8' needs"),
    ],
)
def test_malformed_payloads_are_rejected_clearly(mutate, message):
    with pytest.raises(PayloadError, match=message):
        decode(mutate(_valid()))


def test_hostile_shape_cannot_force_a_huge_allocation():
    # Declares 65536 x 65536 floats (16 GiB) in a few bytes: rejected before allocating.
    hostile = encode(torch.zeros(1, 1), "raw")
    dims_at = 4 + 2 + len("raw") + 2
    hostile = hostile[:dims_at] + struct.pack("<II", 65536, 65536) + hostile[dims_at + 8 :]
    with pytest.raises(PayloadError, match="over the limit"):
        decode(hostile)
    # Under a generous element limit it still cannot allocate: the body must match the shape.
    with pytest.raises(PayloadError, match="needs 17179869184 body bytes"):
        decode(hostile, max_elements=1 << 40)


@pytest.mark.parametrize(
    ("lo", "step"), [(float("nan"), 1.0), (0.0, float("inf")), (3e38, 1e37), (0.0, -1.0)]
)  # fmt: skip
def test_bad_block_scales_are_rejected(lo, step):
    b = bytearray(_valid())
    head = 4 + 2 + 4 + 2 + 8  # magic/version/len, "int8", dtype/ndim, two dims
    b[head : head + 8] = struct.pack("<ff", lo, step)  # first block's (min, step)
    with pytest.raises(PayloadError, match="block scale"):
        decode(bytes(b))


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_round_trip(codec, dtype):
    x = torch.randn(3, 70).to(dtype)
    y = decode(encode(x, codec))
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.float(), x.float(), atol=0.02, rtol=0.02)
    y.add_(1)  # decoded tensors own their memory: writing to them is allowed


def test_int8_refuses_to_encode_non_finite_values():
    x = torch.randn(2, 64)
    x[1, 5] = float("nan")
    with pytest.raises(PayloadError, match="cannot encode NaN"):
        encode(x, "int8")
