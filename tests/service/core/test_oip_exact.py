"""Triton's binary tensor extension, exactly: ``binary_data_size`` must equal the shape's byte count (a smaller
or a larger size is a 400 with a clear message, never a 500 and never bytes silently swallowed), every byte
after the JSON header must be claimed, and the values are the little-endian floats sent, checked against
``struct``-packed references. The codec on its own, then the real app in process."""

from __future__ import annotations

import gzip
import struct
import zlib
from importlib import metadata

import numpy as np
import orjson
import pytest
from tests.service.asgi_app import RBN_MODEL, app

from rbn.contract.bundle import BundleMeta
from service.core.errors import BodyTooLarge, InvalidTensor
from service.core.oip import (STEP, InputOutOfRange, ResponseTooLarge, TooManyValues, answer_bytes, count_capped,
                              decompress, encode_infer, model_metadata, parse_infer, read_infer, server_metadata)

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


# --- the rest of the codec, against values worked out by hand -------------------------------------------------


def json_request(values: list[float], **extra) -> bytes:
    return orjson.dumps({**extra, "inputs": [{"name": "input", "shape": [len(values) // 4, 1, 2, 2], "datatype": "FP32",
                                              "data": values}]})


def padded_to_commas(total: int) -> bytes:
    """A valid 1-image request whose bytes hold exactly ``total`` commas (the rest in its id)."""
    base = json_request(VALUES[:4], id="")
    return json_request(VALUES[:4], id="," * (total - base.count(b",")))


@pytest.mark.parametrize(("commas", "refused"), [(1027, False), (1028, False), (1029, True)])
def test_the_value_count_cap_is_exact(commas, refused):
    """max_images 1 of 1x2x2: 4 values + 1024 of slack = 1028 commas at most."""
    body = padded_to_commas(commas)
    assert body.count(b",") == commas
    for encoding, data in ((None, body), ("gzip", gzip.compress(body))):
        if refused:
            with pytest.raises(TooManyValues, match="more values than max_queue_size images"):
                read_infer(data, encoding, None, META, 1 << 20, max_images=1)
        else:
            assert read_infer(data, encoding, None, META, 1 << 20, max_images=1).x.shape == (1, 1, 2, 2)


def test_count_capped_counts_across_windows_and_within_bounds():
    data = b"," * (STEP + 10)
    assert count_capped(data, b",", STEP + 10) == STEP + 10
    with pytest.raises(TooManyValues):
        count_capped(data, b",", STEP + 9)
    assert count_capped(b",a,,b,", b",", 10, 1, 4) == 2  # bytes 1..3: ",", "," of "a,,b"
    assert count_capped(b",,,,", b",", 10, 0, 0) == 0


@pytest.mark.parametrize(("value", "refused"), [(1e6, False), (-1e6, False), (1.0000001e6, True), (-1.0000001e6, True)])
def test_the_magnitude_bound_is_inclusive(value, refused):
    values = [0.0] * (STEP // 4 + 4)  # past the first scan window of STEP // 4 floats
    values[-1] = value
    body = json_request(values)
    if refused:
        with pytest.raises(InputOutOfRange) as info:
            parse_infer(body, None, META, max_magnitude=1e6)
        assert info.value.message == ("input 'input' holds values beyond +-1e+06 (max_input_magnitude); "
                                      "send preprocessed values")
        assert info.value.code == "input_out_of_range" and info.value.status == 400
    else:
        assert parse_infer(body, None, META, max_magnitude=1e6).x.reshape(-1)[-1] == np.float32(value)


def test_answer_bytes_by_hand():
    # 2 images: logits 3 values as JSON (16 bytes each), rbn_stats 2 values binary (4 bytes each), 128 per entry
    assert answer_bytes(META, [("logits", False), ("rbn_stats", True)], 2) == 256 + 128 + 2 * 3 * 16 + 128 + 2 * 2 * 4
    body = json_request(VALUES, outputs=[{"name": "logits"}, {"name": "rbn_stats", "parameters": {"binary_data": True}}])
    assert parse_infer(body, None, META, max_response_bytes=624).outputs == [("logits", False), ("rbn_stats", True)]
    with pytest.raises(ResponseTooLarge) as info:
        parse_infer(body, None, META, max_response_bytes=623)
    assert info.value.message.startswith("the answer to this request could take 624 bytes, over the server's "
                                         "max_response_bytes of 623")


def test_requested_outputs():
    def outputs(value, **params):
        return parse_infer(json_request(VALUES[:4], outputs=value, parameters=params), None, META).outputs
    assert outputs(None) == [("logits", False), ("rbn_stats", False)]
    assert outputs(None, binary_data_output=True) == [("logits", True), ("rbn_stats", True)]
    assert outputs([{"name": "rbn_stats"}]) == [("rbn_stats", False)]
    assert outputs([{"name": "logits", "parameters": {"binary_data": True}}], binary_data_output=False) == [("logits", True)]
    assert outputs([{"name": "logits", "parameters": {"binary_data": False}}], binary_data_output=True) == [("logits", False)]
    for bad, message in (([], "'outputs' must be a non-empty list"), ({"name": "logits"}, "'outputs' must be a non-empty list"),
                         ([{"name": "nope"}], "unknown output 'nope'; the model gives logits, rbn_stats"),
                         ([{"name": "logits"}, {"name": "logits"}], "output 'logits' is requested more than once"),
                         ([{"name": "logits", "parameters": {"classification": 2}}], "the classification extension"),
                         ([{"name": "logits", "parameters": {"binary_data": "yes"}}],
                          "parameter 'binary_data' must be true or false")):
        with pytest.raises(InvalidTensor) as info:
            outputs(bad)
        assert info.value.message.startswith(message), (bad, info.value.message)
    with pytest.raises(InvalidTensor, match="'outputs' lists 3 entries but the model gives 2 outputs"):
        outputs([{"name": "logits"}, {"name": "rbn_stats"}, {"name": "logits"}])


def test_encode_infer_json_and_binary_exactly():
    parsed = parse_infer(json_request(VALUES[:4], id="req-1", outputs=[
        {"name": "logits"}, {"name": "rbn_stats", "parameters": {"binary_data": True}}]), None, META)
    logits = np.array([[0.5, -1.0, 2.0]], np.float32)
    stats = np.array([[1.5, -0.25]], np.float32)
    body, headers, media = encode_infer(META, parsed, {"logits": logits, "rbn_stats": stats})
    head = orjson.dumps({"model_name": "m", "model_version": "1", "id": "req-1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [0.5, -1.0, 2.0]},
        {"name": "rbn_stats", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}]})
    assert body == head + struct.pack("<2f", 1.5, -0.25)
    assert headers == {"Inference-Header-Content-Length": str(len(head))} and media == "application/octet-stream"
    only_json = parse_infer(json_request(VALUES[:4], outputs=[{"name": "logits"}]), None, META)
    body, headers, media = encode_infer(META, only_json, {"logits": logits, "rbn_stats": stats})
    assert orjson.loads(body) == {"model_name": "m", "model_version": "1", "outputs": [
        {"name": "logits", "datatype": "FP32", "shape": [1, 3], "data": [0.5, -1.0, 2.0]}]}
    assert headers == {} and media == "application/json"


def test_metadata_exactly():
    assert server_metadata() == {"name": "rbn-serve", "version": metadata.version("rbn-serve"),
                                 "extensions": ["binary_tensor_data"]}
    assert model_metadata(META) == {
        "name": "m", "versions": ["1"], "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 2, 2]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
                    {"name": "rbn_stats", "datatype": "FP32", "shape": [-1, 2]}]}


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZIP", " gzip "])
def test_decompress_limit_is_exact(encoding):
    raw = b"x" * 5000
    packed = gzip.compress(raw) if encoding.strip().lower() == "gzip" else zlib.compress(raw)
    assert decompress(packed, encoding, 5000) == raw
    with pytest.raises(BodyTooLarge, match="decompressed request body exceeds the limit of 4999 bytes"):
        decompress(packed, encoding, 4999)


def test_decompress_refusals():
    assert decompress(b"abc", None, 1) == b"abc" and decompress(b"abc", "identity", 1) == b"abc"
    with pytest.raises(InvalidTensor, match="unsupported Content-Encoding 'br'; use gzip or deflate"):
        decompress(b"abc", "br", 100)
    with pytest.raises(InvalidTensor, match="cannot decompress the gzip body"):
        decompress(b"not gzip at all", "gzip", 100)
    with pytest.raises(InvalidTensor, match="truncated compressed body: the gzip stream ends before its end marker"):
        decompress(gzip.compress(b"y" * 1000)[:-8], "gzip", 10_000)
    big = gzip.compress(b"," * (3 * STEP))  # inflates in 1 MiB steps: the comma cap stops it at the first
    with pytest.raises(TooManyValues):
        decompress(big, "gzip", 10 * STEP, max_commas=STEP - 1)
    assert len(decompress(big, "gzip", 10 * STEP, max_commas=3 * STEP)) == 3 * STEP


META3 = BundleMeta(
    name="m3", architecture="resnet20", norm="bn", labels=["a", "b"],
    input=dict(channels=3, height=2, width=2, mean=[0.0] * 3, std=[1.0] * 3), stats_layers=["l1"], onnx_sha256="0" * 64,
)


def test_the_value_cap_counts_every_dimension():
    """3 channels of 2x2 and max_images 2: 2 * 12 + 1024 = 1048 commas at most."""
    values = [0.0] * 12
    base = orjson.dumps({"id": "", "inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": values}]})
    for total, refused in ((1048, False), (1049, True)):
        body = orjson.dumps({"id": "," * (total - base.count(b",")),
                             "inputs": [{"name": "input", "shape": [1, 3, 2, 2], "datatype": "FP32", "data": values}]})
        assert body.count(b",") == total
        if refused:
            with pytest.raises(TooManyValues) as info:
                read_infer(body, None, None, META3, 1 << 20, max_images=2)
            assert info.value.message == ("the JSON request holds more values than max_queue_size images; "
                                          "split the request")
        else:
            assert read_infer(body, None, None, META3, 1 << 20, max_images=2).x.shape == (1, 3, 2, 2)


def test_commas_in_the_binary_tail_are_not_json_values():
    comma_floats = struct.pack("<f", struct.unpack("<f", b",,,,")[0]) * 8  # 32 bytes, every one 0x2C
    assert comma_floats.count(b",") == 32
    body, length = binary(32, comma_floats)
    for encoding, data in ((None, body), ("gzip", gzip.compress(body))):
        parsed = read_infer(data, encoding, length, META, 1 << 20, max_images=1)  # cap 1028: only the JSON counts
        assert parsed.x.shape == (2, 1, 2, 2)


def test_read_infer_passes_the_magnitude_and_needs_no_cap():
    body = json_request([0.0, 0.0, 0.0, 2e6])
    with pytest.raises(InputOutOfRange):
        read_infer(body, None, None, META, 1 << 20, max_magnitude=1e6)
    assert read_infer(gzip.compress(body), "gzip", None, META, 1 << 20).x.reshape(-1)[-1] == np.float32(2e6)


def test_a_request_level_parameters_must_be_an_object():
    with pytest.raises(InvalidTensor) as info:
        parse_infer(json_request(VALUES[:4], parameters=[1]), None, META)
    assert info.value.message == "'parameters' must be an object"


def test_named_outputs_take_the_request_default_and_the_duplicate_message_is_exact():
    body = json_request(VALUES[:4], outputs=[{"name": "rbn_stats"}], parameters={"binary_data_output": True})
    assert parse_infer(body, None, META).outputs == [("rbn_stats", True)]
    body = json_request(VALUES[:4], outputs=[{"name": "logits"}, {"name": "rbn_stats"}, {"name": "logits"}])
    with pytest.raises(InvalidTensor) as info:
        parse_infer(body, None, META)
    assert info.value.message == ("'outputs' lists 3 entries but the model gives 2 outputs (logits, rbn_stats): an "
                                  "output is requested more than once; name each output once")


def test_binary_outputs_are_little_endian_float32_back_to_back():
    parsed = parse_infer(json_request(VALUES[:4], parameters={"binary_data_output": True}), None, META)
    logits = np.array([[0.5, -1.0, 2.0]], np.float64)  # float64 in: four bytes each out
    stats = np.array([[1.5, -0.25]], np.float32)
    body, headers, _ = encode_infer(META, parsed, {"logits": logits, "rbn_stats": stats})
    head = int(headers["Inference-Header-Content-Length"])
    assert body[head:] == struct.pack("<3f", 0.5, -1.0, 2.0) + struct.pack("<2f", 1.5, -0.25)
    entries = orjson.loads(body[:head])["outputs"]
    assert [e["parameters"]["binary_data_size"] for e in entries] == [12, 8]


def test_gzip_means_gzip_and_the_limit_is_on_the_total():
    with pytest.raises(InvalidTensor, match="cannot decompress the gzip body"):
        decompress(zlib.compress(b"x" * 100), "gzip", 1000)  # zlib data labelled gzip
    packed = gzip.compress(b"x" * (3 * STEP))
    assert len(decompress(packed, "gzip", 3 * STEP)) == 3 * STEP
    with pytest.raises(BodyTooLarge):
        decompress(packed, "gzip", 2 * STEP)  # every 1 MiB step is below the limit, the total is not
    commas = gzip.compress(b"," * (3 * STEP))
    with pytest.raises(TooManyValues):
        decompress(commas, "gzip", 10 * STEP, max_commas=2 * STEP)  # counted over the steps, not per step


def test_inflating_stops_at_the_limit_without_inflating_the_rest():
    """A 64 MiB bomb against a 1 MiB limit: at most a step or two is ever held in memory."""
    import tracemalloc

    bomb = gzip.compress(bytes(64 * STEP))
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            decompress(bomb, "gzip", STEP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * STEP, peak
    bomb = gzip.compress(b"," * (16 * STEP))
    tracemalloc.start()
    try:
        with pytest.raises(TooManyValues):
            read_infer(bomb, "gzip", None, META, 32 * STEP, max_images=1)  # the comma cap stops the inflating
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * STEP, peak


def tensor_request(**fields) -> bytes:
    tensor = {"name": "input", "shape": [2, 1, 2, 2], "datatype": "FP32", "data": VALUES}
    tensor.update(fields)
    return orjson.dumps({"inputs": [tensor]})


@pytest.mark.parametrize(("body", "message"), [
    (b"[1]", "request must be a JSON object with 'inputs'"),
    (orjson.dumps({"id": 5, "inputs": []}), "'id' must be a string"),
    (orjson.dumps({"inputs": 5}), "'inputs' must hold exactly one tensor, 'input'"),
    (orjson.dumps({"inputs": [5]}), "'inputs' must hold exactly one tensor, 'input'"),
    (orjson.dumps({"inputs": []}), "'inputs' must hold exactly one tensor, 'input'"),
    (orjson.dumps({"inputs": [{"name": "input"}, {"name": "input"}]}), "'inputs' must hold exactly one tensor, 'input'"),
    (tensor_request(name="x"), "unknown input 'x'; model m takes 'input'"),
    (tensor_request(datatype="INT8"), "input 'input' has datatype 'INT8'; expected FP32"),
    (tensor_request(shape=[2, 1, 2]), "input 'input' has shape [2, 1, 2]; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(shape=[2, 1, 2, 2.0]), "input 'input' has shape [2, 1, 2, 2.0]; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(shape=None), "input 'input' has shape None; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(shape=5), "input 'input' has shape 5; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(shape=[0, 1, 2, 2], data=[]), "input 'input' has shape [0, 1, 2, 2]; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(shape=[2, 1, 3, 2]), "input 'input' has shape [2, 1, 3, 2]; expected [batch, 1, 2, 2] with batch >= 1"),
    (tensor_request(parameters=[1]), "'parameters' must be an object"),
    (tensor_request(data=None), "input 'input' has no 'data' list (nor binary_data_size)"),
    (tensor_request(data=VALUES[:4]), "input 'input': shape [2, 1, 2, 2] needs 8 values, 'data' holds 4"),
    (tensor_request(data=["a"] * 8), "input 'input': 'data' must be numbers in a flat or shape-nested list"),
    (tensor_request(data=[1e39] + VALUES[1:]), "input 'input' holds NaN or infinite values"),
])
def test_each_malformed_request_is_a_400_with_its_exact_message(body, message):
    with pytest.raises(InvalidTensor) as info:
        parse_infer(body, None, META)
    assert info.value.status == 400 and info.value.message == message


def test_invalid_json_says_so():
    with pytest.raises(InvalidTensor) as info:
        parse_infer(b"{not json", None, META)
    assert info.value.message.startswith("request is not valid JSON: ")


def test_only_the_json_header_is_counted_even_when_the_tail_is_all_commas():
    tail = b"," * 4800  # 1200 floats, every byte 0x2C: far more than the cap of 1028 commas
    body, length = binary(4800, tail, shape=(300, 1, 2, 2))
    for encoding, data in ((None, body), ("gzip", gzip.compress(body))):
        assert read_infer(data, encoding, length, META, 1 << 20, max_images=1).x.shape == (300, 1, 2, 2)


def test_read_infer_passes_the_response_budget():
    body = json_request(VALUES, outputs=[{"name": "logits"}])  # 256 + 128 + 2 * 3 * 16 = 480 bytes at most
    assert read_infer(body, None, None, META, 1 << 20, max_response_bytes=480).outputs == [("logits", False)]
    with pytest.raises(ResponseTooLarge):
        read_infer(body, None, None, META, 1 << 20, max_response_bytes=479)


def test_the_magnitude_scan_sees_the_first_value_and_small_bounds():
    with pytest.raises(InputOutOfRange):
        parse_infer(json_request([5.0, 0.0, 0.0, 0.0]), None, META, max_magnitude=1.0)
    assert parse_infer(json_request([0.25, -0.5, 0.0, 0.5]), None, META, max_magnitude=0.5).x.shape == (1, 1, 2, 2)
