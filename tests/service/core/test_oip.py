"""The Open Inference Protocol codec on its own."""

from __future__ import annotations

import gzip
import json
import zlib

import numpy as np
import orjson
import pytest

from rbn.contract.bundle import BundleMeta
from service.core.errors import BodyTooLarge, InvalidTensor
from service.core.oip import HEADER_LENGTH, decompress, encode_infer, model_metadata, parse_infer

META = BundleMeta(
    name="m", architecture="resnet20", norm="bn", labels=["a", "b", "c"],
    input=dict(channels=1, height=2, width=2, mean=[0.0], std=[1.0]), stats_layers=["l1", "l2"],
    onnx_sha256="0" * 64,
)


def request(data=None, shape=(2, 1, 2, 2), **extra) -> bytes:
    tensor = {"name": "input", "shape": list(shape), "datatype": "FP32",
              "data": list(range(int(np.prod(shape)))) if data is None else data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def test_metadata_shapes():
    meta = model_metadata(META)
    assert meta["inputs"][0]["shape"] == [-1, 1, 2, 2]
    assert [o["shape"] for o in meta["outputs"]] == [[-1, 3], [-1, 2]]


def test_flat_and_nested_data():
    flat = parse_infer(request(), None, META)
    nested = parse_infer(request(data=np.arange(8).reshape(2, 1, 2, 2).tolist()), None, META)
    assert flat.x.dtype == np.float32 and flat.x.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(flat.x, nested.x)
    assert flat.outputs == [("logits", False), ("rbn_stats", False)] and flat.id is None


def test_binary_inputs_and_outputs_round_trip():
    x = np.arange(8, dtype="<f4").reshape(2, 1, 2, 2)
    head = json.dumps({"id": "7", "inputs": [{"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32",
                                              "parameters": {"binary_data_size": 32}}],
                       "outputs": [{"name": "rbn_stats", "parameters": {"binary_data": True}}, {"name": "logits"}]}).encode()
    parsed = parse_infer(head + x.tobytes(), str(len(head)), META)
    np.testing.assert_array_equal(parsed.x, x)
    assert parsed.outputs == [("rbn_stats", True), ("logits", False)]
    stats = np.array([[1, 2], [3, 4]], np.float32)
    body, headers, media = encode_infer(META, parsed, {"logits": np.zeros((2, 3), np.float32), "rbn_stats": stats})
    length = int(headers[HEADER_LENGTH])
    answer = orjson.loads(body[:length])
    assert media == "application/octet-stream" and answer["id"] == "7"
    assert answer["outputs"][0] == {"name": "rbn_stats", "datatype": "FP32", "shape": [2, 2],
                                    "parameters": {"binary_data_size": 16}}
    assert answer["outputs"][1]["data"] == [0.0] * 6
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(2, 2), stats)


def test_binary_data_output_for_all():
    parsed = parse_infer(request(parameters={"binary_data_output": True}), None, META)
    assert parsed.outputs == [("logits", True), ("rbn_stats", True)]


@pytest.mark.parametrize("body, fragment", [
    (b"[1, 2]", "JSON object"),
    (request(shape=(0, 1, 2, 2), data=[]), "batch >= 1"),
    (request(shape=(1, 1, 2)), "shape"),
    (request(data=[1.0, float("nan")] * 4), None),  # NaN is not JSON: rejected by the parser
    (request(data=[[1, 2], [3]]), "numbers"),
    (request(outputs=[{"name": "logits", "parameters": {"classification": 2}}]), "classification"),
    (request(outputs=[]), "non-empty"),
    (request(parameters={"binary_data_output": "yes"}), "true or false"),
])
def test_rejections(body, fragment):
    with pytest.raises(InvalidTensor) as info:
        parse_infer(body, None, META)
    assert info.value.status == 400
    if fragment:
        assert fragment in info.value.message


def test_non_finite_binary_and_leftover_bytes():
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 16}}]}).encode()
    x = np.array([0, np.inf, 0, 0], "<f4")
    with pytest.raises(InvalidTensor, match="NaN or infinite"):
        parse_infer(head + x.tobytes(), str(len(head)), META)
    with pytest.raises(InvalidTensor, match="not claimed"):
        parse_infer(head + np.zeros(5, "<f4").tobytes(), str(len(head)), META)
    with pytest.raises(InvalidTensor, match=HEADER_LENGTH):
        parse_infer(head, "99999", META)


def test_decompress_is_bounded():
    data = b"x" * 10_000
    assert decompress(gzip.compress(data), "gzip", 10_000) == data
    assert decompress(zlib.compress(data), "deflate", 10_000) == data
    assert decompress(data, None, 10) == data
    with pytest.raises(BodyTooLarge):
        decompress(gzip.compress(b"\0" * 1_000_000), "gzip", 1000)  # a zip bomb stops at the limit
    with pytest.raises(InvalidTensor):
        decompress(b"not gzip", "gzip", 1000)
    with pytest.raises(InvalidTensor, match="Content-Encoding"):
        decompress(data, "br", 1000)


@pytest.mark.parametrize("encoding, compress", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_truncated_compressed_body_is_refused(encoding, compress):
    body = compress(bytes(range(256)) * 40)
    for cut in (4, len(body) // 2):  # the trailer missing; half the stream missing
        with pytest.raises(InvalidTensor, match="truncated compressed body") as info:
            decompress(body[:-cut], encoding, 100_000)
        assert info.value.status == 400
