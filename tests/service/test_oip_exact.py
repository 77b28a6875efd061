"""Triton's binary tensor extension, exactly: ``binary_data_size`` must equal the shape's byte count (a smaller
or a larger size is a 400 with a clear message, never a 500 and never bytes silently swallowed), every byte
after the JSON header must be claimed, and the values are the little-endian floats sent, checked against
``struct``-packed references. The codec on its own, then the real app in process."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
from asgi_app import RBN_MODEL, app

from rbn.contract.bundle import BundleMeta
from service.core.errors import InvalidTensor
from service.core.oip import parse_infer

META = BundleMeta(
    name="m", architecture="resnet20", norm="bn", labels=["a", "b", "c"],
    input=dict(channels=1, height=2, width=2, mean=[0.0], std=[1.0]), stats_layers=["l1", "l2"],
    onnx_sha256="0" * 64,
)
VALUES = [0.5, -1.25, 3.0, 1e-3, -0.0, 7.75, 2.5, -4.0]  # shape (2, 1, 2, 2): 8 floats, 32 bytes
RAW = struct.pack("<8f", *VALUES)


def binary(size, tail: bytes, shape=(2, 1, 2, 2)) -> tuple[bytes, str]:
    head = orjson.dumps({"inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]})
    return head + tail, str(len(head))


def test_the_binary_values_are_the_floats_sent():
    body, length = binary(32, RAW)
    parsed = parse_infer(body, length, META)
    assert parsed.x.dtype == np.float32 and parsed.x.shape == (2, 1, 2, 2)
    assert parsed.x.reshape(-1).tolist() == [np.float32(v) for v in VALUES]
    assert parsed.x.flags.writeable and parsed.x.flags.c_contiguous


@pytest.mark.parametrize(("size", "tail"), [
    (28, RAW[:28]),          # one float short, and the body holds exactly that
    (36, RAW + RAW[:4]),     # one float more than the shape, and the body holds it
    (0, b""),
    (4, RAW[:4]),
])
def test_a_size_that_is_not_the_shapes_byte_count_is_refused(size, tail):
    body, length = binary(size, tail)
    with pytest.raises(InvalidTensor) as info:
        parse_infer(body, length, META)
    assert info.value.status == 400
    assert info.value.message == f"input 'input': binary_data_size {size} must be 32 bytes and present in the body"


def test_a_right_size_missing_from_the_body_is_refused():
    body, length = binary(32, RAW[:28])
    with pytest.raises(InvalidTensor, match="binary_data_size 32 must be 32 bytes and present in the body"):
        parse_infer(body, length, META)


@pytest.mark.parametrize("extra", [1, 4, 32])
def test_bytes_after_the_tensor_are_never_swallowed(extra):
    body, length = binary(32, RAW + bytes(extra))
    with pytest.raises(InvalidTensor) as info:
        parse_infer(body, length, META)
    assert info.value.message == f"{extra} bytes of binary data are not claimed by any input"


@pytest.mark.parametrize("size", [32.0, "32", True, None, [32]])
def test_a_size_that_is_not_an_integer_is_refused(size):
    body, length = binary(size, RAW)
    with pytest.raises(InvalidTensor, match="binary_data_size"):
        parse_infer(body, length, META)


def test_the_header_length_must_be_ascii_digits_within_the_body():
    body, length = binary(32, RAW)
    for bad in (str(len(body) + 1), "\u00b2", "-1", "1e2", ""):
        with pytest.raises(InvalidTensor) as info:
            parse_infer(body, bad, META)
        assert info.value.message == f"Inference-Header-Content-Length {bad!r} does not fit a body of {len(body)} bytes"
    json_only = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                                          "data": VALUES[:4]}]})
    assert parse_infer(json_only, str(len(json_only)), META).x.reshape(-1).tolist() == [np.float32(v) for v in VALUES[:4]]
    with pytest.raises(InvalidTensor, match="request is not valid JSON"):
        parse_infer(json_only, str(len(json_only) - 1), META)


# --- over the real app: 400 with the protocol's error body, never 500 ------------------------------------------
@pytest.fixture(scope="module")
def served():
    with app() as a:
        yield a


def infer(served, size: int, tail: bytes):
    head = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]})
    return served.client.post(f"/v2/models/{RBN_MODEL}/infer", content=head + tail,
                              headers={"Content-Type": "application/octet-stream",
                                       "Inference-Header-Content-Length": str(len(head))})


def test_the_app_answers_a_wrong_binary_size_with_400_and_the_reason(served):
    image = struct.pack("<784f", *([0.25] * 784))  # 3136 bytes
    assert infer(served, 3136, image).status_code == 200
    for size, tail in ((3132, image[:3132]), (3140, image + image[:4])):
        r = infer(served, size, tail)
        assert r.status_code == 400, r.text
        assert r.json() == {"error": f"input 'input': binary_data_size {size} must be 3136 bytes and present in the body"}
    r = infer(served, 3136, image + b"\0\0\0\0")
    assert r.status_code == 400 and r.json() == {"error": "4 bytes of binary data are not claimed by any input"}
