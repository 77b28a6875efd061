"""A model that fails on some inputs, through a real server: the failing request gets a generic 500
with its request id (ONNX Runtime's text only in the log, under that id), other requests batched
with it still succeed, and after ``unready_after_failures`` consecutive failures readiness turns
false until the watchdog's canary batch of zeros succeeds."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.reliability.rel_support import MODELS, get, start

NAME = "test-poison"
POISON = 1.0e7  # an image holding this value makes the graph's Reshape impossible


def write_poison_bundle(repo: Path) -> None:
    """A valid bundle whose graph fails at run time when any pixel of the batch reaches ``POISON``:
    the target shape of a Reshape becomes [-1, pixels + 1]. Zeros (warm-up, canary) run fine."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.graph_bundles import STATS_LAYERS as layers, write_graph_bundle

    fields = json.loads((MODELS / "fmnist-resnet20-bn" / "model.json").read_text())
    spec = fields["input"]
    pixels, labels = spec["channels"] * spec["height"] * spec["width"], len(fields["labels"])
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(np.array([-1, pixels], np.int64), "shape"),
               numpy_helper.from_array(np.array([0, 1], np.int64), "bump"),
               numpy_helper.from_array(np.array(POISON / 2, np.float32), "limit"),
               numpy_helper.from_array(rng.standard_normal((pixels, labels)).astype(np.float32), "w_logits"),
               numpy_helper.from_array(rng.standard_normal((pixels, layers)).astype(np.float32), "w_stats")]
    nodes = [helper.make_node("Flatten", [spec["name"]], ["flat"]),
             helper.make_node("ReduceMax", [spec["name"]], ["peak"], keepdims=0),
             helper.make_node("Greater", ["peak", "limit"], ["poisoned"]),
             helper.make_node("Cast", ["poisoned"], ["flag"], to=TensorProto.INT64),
             helper.make_node("Mul", ["bump", "flag"], ["extra"]),
             helper.make_node("Add", ["shape", "extra"], ["target"]),
             helper.make_node("Reshape", ["flat", "target"], ["checked"]),
             helper.make_node("MatMul", ["checked", "w_logits"], ["logits"]),
             helper.make_node("MatMul", ["checked", "w_stats"], ["rbn_stats"])]
    write_graph_bundle(repo, NAME, fields, nodes, weights)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("poison-models")
    write_poison_bundle(repo)
    # the poison must reach the graph (max_input_magnitude above it)
    with start(tmp_path_factory.mktemp("poison"), model_repository=repo, unready_after_failures=3,
               max_queue_delay_ms=50, max_input_magnitude=10 * POISON) as proc:
        yield proc


def infer_body(value: float, images: int = 1) -> dict:
    return {"inputs": [{"name": "input", "shape": [images, 1, 28, 28], "datatype": "FP32",
                        "data": [value] * (784 * images)}]}


def test_a_poisoned_request_fails_alone_with_a_generic_message(server):
    async def burst(round_: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            url = f"/v2/models/{NAME}/infer"
            bodies = [infer_body(0.5)] * 6 + [infer_body(POISON)] + [infer_body(0.25)] * 6
            return await asyncio.gather(*(c.post(url, json=b, headers={"X-Request-ID": f"r{round_}-{i}"})
                                          for i, b in enumerate(bodies)))

    # Batches form only while the runtime is busy, so a burst may run alone; a few rounds make sure
    # the poisoned request once shared a batch (the log then shows the per-request retry).
    for round_ in range(6):
        responses = asyncio.run(burst(round_))
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 6 + [500] + [200] * 6, statuses
        bad = responses[6]
        assert bad.headers["x-request-id"] == f"r{round_}-6"
        message = bad.json()["error"]
        assert "inference failed for this request" in message and f"r{round_}-6" in message
        assert "Reshape" not in message and "ONNXRuntimeError" not in message  # ORT's text stays in the log
        if "retrying each alone" in server.log():
            break
    log = server.log()
    assert "retrying each alone" in log, "no burst formed a multi-request batch\n" + log[-2000:]
    assert f"[r{round_}-6]" in log and "Reshape" in log


def test_consecutive_failures_turn_readiness_false_until_a_canary_succeeds(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get("/readyz").status_code == 200
        for _ in range(3):
            assert c.post(f"/v2/models/{NAME}/infer", json=infer_body(POISON)).status_code == 500
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        assert "inference batches failed" in r.json()["reason"]
        deadline = time.monotonic() + 10  # the watchdog's canary (zeros) runs within a second or two
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "readiness did not come back"
            time.sleep(0.1)
        assert c.post(f"/v2/models/{NAME}/infer", json=infer_body(0.5)).status_code == 200
    assert get(server.url, "/healthz")[0] == 200
