"""Batched and unbatched inference give the same answers per image, through HTTP: a sample's
statistics come from that sample alone, whatever it is batched with."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import tritonclient.http as triton
from svc_support import RBN


def batch_histogram(client) -> tuple[float, float]:
    """(batches, images) executed so far for the RBN model."""
    values = {}
    for line in client.get("/metrics").text.splitlines():
        for key in ("count", "sum"):
            if line.startswith(f'rbn_serve_batch_size_{key}{{model="{RBN}"}}'):
                values[key] = float(line.split()[-1])
    return values["count"], values["sum"]


def test_v2_batch_equals_single_requests(server, client):
    v2 = triton.InferenceServerClient(server.url.removeprefix("http://"))
    rng = np.random.default_rng(3)
    # wildly different samples in one batch: if statistics leaked across samples, answers would move
    x = np.concatenate([
        rng.standard_normal((6, 1, 28, 28)),
        rng.standard_normal((5, 1, 28, 28)) * 10 + 5,
        np.zeros((5, 1, 28, 28)),
    ]).astype(np.float32)

    def infer(batch: np.ndarray):
        t = triton.InferInput("input", list(batch.shape), "FP32")
        t.set_data_from_numpy(batch)
        r = v2.infer(RBN, [t])
        return r.as_numpy("logits"), r.as_numpy("rbn_stats")

    batches_before, _ = batch_histogram(client)
    logits, stats = infer(x)
    assert batch_histogram(client)[0] == batches_before + 1  # one batch of 16 (max_batch_size)
    for i in range(len(x)):
        one_logits, one_stats = infer(x[i : i + 1])
        np.testing.assert_allclose(one_logits[0], logits[i], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(one_stats[0], stats[i], rtol=1e-4, atol=1e-5)


def test_concurrent_predicts_batch_and_match_sequential(server, client, fmnist_samples):
    images = [data for _, data, _ in fmnist_samples[:16]]

    def predict(data: bytes, c: httpx.Client) -> dict:
        r = c.post("/predict", content=data, headers={"Content-Type": "image/png"}, params={"top_k": 10})
        assert r.status_code == 200, r.text
        return r.json()

    sequential = [predict(d, client) for d in images]
    batches0, images0 = batch_histogram(client)
    with ThreadPoolExecutor(16) as pool:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(16)]
        concurrent = []
        for _ in range(3):  # a few rounds so some requests surely coalesce
            concurrent = list(pool.map(predict, images, clients))
        for c in clients:
            c.close()
    batches1, images1 = batch_histogram(client)
    assert images1 - images0 == 48
    assert batches1 - batches0 < 48, "concurrent requests were coalesced into batches"
    for seq, conc in zip(sequential, concurrent, strict=True):
        a, b = seq["predictions"][0], conc["predictions"][0]
        assert a["index"] == b["index"]
        np.testing.assert_allclose([t["probability"] for t in a["top_k"]], [t["probability"] for t in b["top_k"]],
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(list(a["ood"]["stats"].values()), list(b["ood"]["stats"].values()), rtol=1e-4, atol=1e-6)
