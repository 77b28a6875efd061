"""Batched and unbatched inference give the same answers per image, through HTTP: a sample's
statistics come from that sample alone, whatever it is batched with."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import tritonclient.http as triton
from tests.service.svc_support import HANG, HANG_LIMIT, RBN, start_server, write_slow_bundle


def batch_histogram(client) -> tuple[float, float]:
    """(batches, images) executed so far for the RBN model."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for key in ("count", "sum"):
            if line.startswith(f'rbn_serve_batch_size_{key}{{model="{RBN}"}}'):
                values[key] = float(line.split()[-1])
    return values["count"], values["sum"]


def v2_infer(server, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    v2 = triton.InferenceServerClient(server.url.removeprefix("http://"))
    t = triton.InferInput("input", list(batch.shape), "FP32")
    t.set_data_from_numpy(batch)
    r = v2.infer(RBN, [t])
    return r.as_numpy("logits"), r.as_numpy("rbn_stats")


def test_v2_batch_equals_single_requests(server, client):
    rng = np.random.default_rng(3)
    # wildly different samples in one batch: if statistics leaked across samples, answers would move
    x = np.concatenate([
        rng.standard_normal((6, 1, 28, 28)),
        rng.standard_normal((5, 1, 28, 28)) * 10 + 5,
        np.zeros((5, 1, 28, 28)),
    ]).astype(np.float32)
    batches_before, _ = batch_histogram(client)
    logits, stats = v2_infer(server, x)
    assert batch_histogram(client)[0] == batches_before + 1  # one batch of 16 (max_batch_size)
    for i in range(len(x)):
        one_logits, one_stats = v2_infer(server, x[i : i + 1])
        np.testing.assert_allclose(one_logits[0], logits[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one_stats[0], stats[i], rtol=1e-4, atol=1e-5)


def test_v2_request_larger_than_the_batch_is_split_and_reassembled(server, client):
    """40 images with max_batch_size 16: batches of 16, 16 and 8, answered in the request's order."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((40, 1, 28, 28)) * rng.uniform(0.5, 5, (40, 1, 1, 1))).astype(np.float32)
    batches0, images0 = batch_histogram(client)
    logits, stats = v2_infer(server, x)
    assert batch_histogram(client) == (batches0 + 3, images0 + 40)
    assert logits.shape == (40, 10) and stats.shape == (40, 21)
    for start in (0, 16, 32):
        part_logits, part_stats = v2_infer(server, x[start : start + 16])
        np.testing.assert_allclose(logits[start : start + 16], part_logits, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(stats[start : start + 16], part_stats, rtol=1e-4, atol=1e-5)
    assert len({row.tobytes() for row in logits}) == 40  # 40 different answers, none duplicated or dropped


def test_concurrent_predicts_batch_and_match_sequential(server, client, fmnist_samples):
    """16 clients released together, round after round until requests were really batched together
    (each answer's timings.batch_size says so; no assumption about how the threads overlap), and each
    batched answer equals the sequential one."""
    images = [data for _, data, _ in fmnist_samples[:16]]

    def predict(data: bytes, c: httpx.Client, start: threading.Barrier | None = None) -> dict:
        if start is not None:
            start.wait(60)
        r = c.post("/predict", content=data, headers={"Content-Type": "image/png"}, params={"top_k": 10})
        assert r.status_code == 200, r.text
        return r.json()

    sequential = [predict(d, client) for d in images]
    assert all(a["timings"]["batch_size"] == 1 for a in sequential)
    batched: list[tuple[dict, dict]] = []
    batches0, images0 = batch_histogram(client)
    rounds = 0
    with ThreadPoolExecutor(16) as pool:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(16)]
        while not batched and rounds < 50:
            rounds += 1
            start = threading.Barrier(16)
            answers = list(pool.map(predict, images, clients, [start] * 16))
            batched = [(seq, a) for seq, a in zip(sequential, answers, strict=True) if a["timings"]["batch_size"] > 1]
        for c in clients:
            c.close()
    assert batched, f"no two of 16 simultaneous requests shared a batch in {rounds} rounds"
    batches1, images1 = batch_histogram(client)
    assert images1 - images0 == 16 * rounds
    assert batches1 - batches0 < 16 * rounds  # the batch histogram agrees: fewer batches than requests
    for seq, conc in batched:
        a, b = seq["predictions"][0], conc["predictions"][0]
        assert a["index"] == b["index"]
        np.testing.assert_allclose([t["probability"] for t in a["top_k"]], [t["probability"] for t in b["top_k"]],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(list(a["ood"]["stats"].values()), list(b["ood"]["stats"].values()), rtol=1e-4, atol=1e-6)


def test_instances_2_runs_two_batches_of_one_model_at_once(bundle_repo, tmp_path):
    """--instances 2: two requests that never finish both run (two batches in flight); with --instances 1
    the second waits for the slot (one batch in flight, both requests open). The stuck batches do not
    hold the shutdown either."""
    repo = tmp_path / "models"
    repo.mkdir()
    write_slow_bundle(repo, bundle_repo / RBN)
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32",
                                   "data": [HANG] + [0.0] * 783}]}).encode()
    for instances in (2, 1):
        (tmp_path / str(instances)).mkdir()
        server = start_server(repo, tmp_path / str(instances), instances=instances, graceful_timeout_s=1,
                              max_input_magnitude=HANG_LIMIT)
        try:
            url = server.url + "/v2/models/test-slow/infer"
            pool = ThreadPoolExecutor(2)
            hung = [pool.submit(httpx.post, url, content=body, timeout=120)]
            wait_for_gauges(server.url, (1, 1))  # the first runs: the second cannot share its batch
            hung.append(pool.submit(httpx.post, url, content=body, timeout=120))
            wait_for_gauges(server.url, (instances, 2))
            assert server.stop() == 0 and not server.killed
            assert all(isinstance(f.exception(60), httpx.HTTPError) or f.result().status_code >= 500 for f in hung)
            pool.shutdown()
        finally:
            server.stop()


def wait_for_gauges(url: str, want: tuple[int, int]) -> None:
    deadline = time.monotonic() + 30
    while (got := gauges(url)) != want:
        assert time.monotonic() < deadline, f"(batches in flight, requests in flight) is {got}, expected {want}"
        time.sleep(0.02)


def gauges(url: str) -> tuple[int, int]:
    """(batches in flight of the slow model, requests in flight besides this /metrics)."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        for name in ('rbn_serve_batches_in_flight{model="test-slow"}', "rbn_serve_requests_in_flight"):
            if line.startswith(name + " "):
                values[name] = int(float(line.split()[-1]))
    return values.get('rbn_serve_batches_in_flight{model="test-slow"}', 0), values["rbn_serve_requests_in_flight"] - 1
