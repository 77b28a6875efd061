"""Bounded answers (issue #25): an OIP request cannot amplify its answer (an output named twice is
refused, a response-size budget is checked before inference), and FP32 values that overflow the model
are refused before inference."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.core import oip
from tests.reliability.rel_support import RBN, get, http, start

V2 = f"/v2/models/{RBN}/infer"
BUDGET = 64 * 1024  # the second server's max_response_bytes


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("bounded")) as proc:
        yield proc


@pytest.fixture(scope="module")
def small_budget(tmp_path_factory):
    with start(tmp_path_factory.mktemp("budget"), max_response_bytes=BUDGET) as proc:
        yield proc


def infer_body(images: int, outputs: list[str] | None = None, value: float = 0.1) -> bytes:
    request: dict = {"inputs": [{"name": "input", "shape": [images, 1, 28, 28], "datatype": "FP32",
                                 "data": [value] * (images * 784)}]}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return json.dumps(request).encode()


def post(url: str, body: bytes) -> tuple[int, dict]:
    status, answer = http("POST", url + V2, body, {"Content-Type": "application/json"})
    return status, json.loads(answer)


def test_a_repeated_output_name_is_refused(server):
    status, answer = post(server.url, infer_body(1, ["logits"] * 5000))
    assert status == 400
    assert "logits" in answer["error"] and "more than once" in answer["error"]


def test_one_of_each_output_is_answered(server):
    status, answer = post(server.url, infer_body(2, ["logits", "rbn_stats"]))
    assert status == 200, answer
    assert [o["name"] for o in answer["outputs"]] == ["logits", "rbn_stats"]


def test_the_response_budget_is_checked_before_inference(small_budget):
    status, answer = post(small_budget.url, infer_body(1))
    assert status == 200, answer  # one image's answer fits
    status, answer = post(small_budget.url, infer_body(64))
    assert status == 400, answer
    assert "max_response_bytes" in answer["error"]
    status, metrics = get(small_budget.url, "/metrics")
    assert b'reason="response_too_large"' in metrics


@pytest.mark.parametrize("value", [3.4e38, -3.0e38, 1e39])
def test_fp32_values_that_overflow_are_refused_before_inference(server, value):
    status, answer = post(server.url, infer_body(1, value=value))
    assert status == 400, answer
    assert "max_input_magnitude" in answer["error"] or "infinite" in answer["error"]


def test_a_binary_fp32_tensor_near_the_float32_limit_is_refused(server):
    x = np.full((1, 1, 28, 28), 3.4e38, "<f4")
    head = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    status, answer = http("POST", server.url + V2, head + x.tobytes(),
                          {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))})
    assert status == 400, answer


def test_the_budget_bounds_what_the_encoder_writes():
    """``answer_bytes`` is an upper bound of ``encode_infer``'s output, the worst float32 values included."""
    from rbn.contract.bundle import read_meta

    from tests.reliability.rel_support import MODELS

    meta = read_meta(MODELS / RBN)
    names = list(oip.graph_outputs(meta))
    for binary in (False, True):
        parsed = oip.ParsedInfer(np.zeros((3, 1, 28, 28), np.float32), [(n, binary) for n in names], "x" * 40)
        worst = {n: np.full((3, *d), -1.1754944e-38, np.float32) for n, d in oip.graph_outputs(meta).items()}
        body, _, _ = oip.encode_infer(meta, parsed, worst)
        assert len(body) <= oip.answer_bytes(meta, parsed.outputs, 3)
