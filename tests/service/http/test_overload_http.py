"""Overload: a full queue answers 503 with Retry-After at once, and the server stays healthy."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from tests.service.svc_support import encode, start_server


@pytest.fixture(scope="module")
def small_server(bundle_repo, tmp_path_factory):
    with start_server(bundle_repo, tmp_path_factory.mktemp("overload"), max_batch_size=4, max_queue_size=4,
                      max_files=4, retry_after_s=2) as proc:
        yield proc


async def _burst(url: str, files: list, n: int) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:
        return await asyncio.gather(*(c.post("/predict", files=files) for _ in range(n)))


def test_overload_gives_503_and_recovers(small_server):
    rng = np.random.default_rng(0)
    files = [("file", (f"{i}.png", encode(rng.integers(0, 255, (28, 28), dtype=np.uint8)), "image/png")) for i in range(4)]
    responses = asyncio.run(_burst(small_server.url, files, 48))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) > 0, "48 concurrent requests of 4 images must overflow a queue of 4 images"
    assert statuses.count(200) > 0
    refused = next(r for r in responses if r.status_code == 503)
    assert refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "queue_full"
    ok = next(r for r in responses if r.status_code == 200)
    assert len(ok.json()["predictions"]) == 4

    with httpx.Client(base_url=small_server.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        assert c.post("/predict", files=files).status_code == 200
        text = c.get("/metrics").text
    assert 'rbn_serve_rejected_requests_total{reason="queue_full",route="/predict"}' in text
    assert 'rbn_serve_requests_total{model="test-resnet20-rbn",route="/predict",status="5xx"}' in text
    assert 'rbn_serve_queue_depth{model="test-resnet20-rbn"} 0.0' in text


def test_v2_batch_larger_than_the_queue_is_a_400_not_a_503(small_server):
    def infer(c: httpx.Client, n: int) -> httpx.Response:
        tensor = {"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32", "data": [0.0] * (n * 784)}
        return c.post("/v2/models/test-resnet20-rbn/infer", json={"inputs": [tensor]})

    def batches_run(c: httpx.Client) -> float:
        series = 'rbn_serve_batch_size_count{model="test-resnet20-rbn"} '
        line = next(line for line in c.get("/metrics").text.splitlines() if line.startswith(series))
        return float(line.removeprefix(series))

    with httpx.Client(base_url=small_server.url, timeout=30) as c:
        assert infer(c, 4).status_code == 200
        before = batches_run(c)
        r = infer(c, 5)  # could never be queued: a 503 with Retry-After would be retried forever
        assert r.status_code == 400 and "retry-after" not in r.headers
        error = r.json()
        assert set(error) == {"error"} and "at most 4 images per request" in error["error"]
        assert batches_run(c) == before  # refused before any chunk was queued
