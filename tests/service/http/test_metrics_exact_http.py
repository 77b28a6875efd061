"""Counters to the exact value on a server of its own (no other test's traffic): shadow comparisons and
their agreement, and label sets that random model names and paths cannot grow."""

from __future__ import annotations

import secrets
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.service.svc_support import BN, RBN, start_server


@pytest.fixture(scope="module")
def own(bundle_repo, tmp_path_factory):
    proc = start_server(bundle_repo, tmp_path_factory.mktemp("exact"), shadow_fraction=1.0, max_batch_size=16)
    with httpx.Client(base_url=proc.url, timeout=60) as c:
        yield c
    proc.stop()


def samples(client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of the rbn_serve_ series."""
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name.startswith("rbn_serve_"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def shadow(client) -> dict[str, float]:
    """{agree: count} of rbn_serve_shadow_comparisons_total for the test pair."""
    out = {}
    for (name, labels), value in samples(client).items():
        if name == "rbn_serve_shadow_comparisons_total":
            labels = dict(labels)
            assert (labels["model"], labels["baseline"]) == (RBN, BN)
            out[labels["agree"]] = value
    return out


def test_shadow_counts_every_image_once_with_its_agreement(own, fmnist_samples):
    assert shadow(own) == {}
    chosen = fmnist_samples[:7]
    files = [("file", (name, data, "image/png")) for name, data, _ in chosen[:4]]
    rbn_answers = own.post("/predict", files=files).json()["predictions"]
    for _, data, _ in chosen[4:]:
        rbn_answers += own.post("/predict", content=data, headers={"Content-Type": "image/png"}).json()["predictions"]
    deadline = time.monotonic() + 30  # shadow runs happen off the request path
    while sum(shadow(own).values()) < len(chosen) and time.monotonic() < deadline:
        time.sleep(0.05)
    # what the baseline itself answers for the same images (a baseline's own requests have no shadow)
    bn_answers = [own.post("/predict", params={"model": BN}, content=data,
                           headers={"Content-Type": "image/png"}).json()["predictions"][0] for _, data, _ in chosen]
    agree = sum(a["index"] == b["index"] for a, b in zip(rbn_answers, bn_answers, strict=True))
    expected = {k: v for k, v in (("true", agree), ("false", len(chosen) - agree)) if v}
    assert shadow(own) == expected
    assert not any(name == "rbn_serve_shadow_dropped_total" for name, _ in samples(own))


def random_traffic(client, n: int) -> list[str]:
    """Requests naming ``n`` random models and paths; the random tokens used."""
    tokens = [secrets.token_hex(6) for _ in range(n)]
    png = {"Content-Type": "image/png"}
    for token in tokens:
        assert client.post("/predict", params={"model": token}, content=b"\x89PNG", headers=png).status_code == 404
        assert client.post(f"/ab?model={token}", content=b"x", headers=png).status_code == 404
        assert client.get(f"/models/{token}").status_code == 404
        assert client.get(f"/v2/models/{token}/ready").status_code in (400, 404)
        assert client.post(f"/v2/models/{token}/infer", json={"inputs": []}).status_code in (400, 404)
        assert client.get(f"/{token}/{token}").status_code == 404
        assert client.post(f"/predict/{token}").status_code in (404, 405)
    return tokens


def test_random_model_names_and_paths_add_no_series(own):
    random_traffic(own, 3)
    first = set(samples(own))
    tokens = random_traffic(own, 25)
    second = samples(own)
    assert set(second) == first, f"new series: {sorted(set(second) - first)[:5]}"
    exposition = own.get("/metrics").text
    assert not [t for t in tokens if t in exposition]
    models = {dict(labels).get("model") for _name, labels in second} - {None}
    assert models <= {RBN, BN, ""}, models
