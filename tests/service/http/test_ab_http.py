"""POST /ab: both arms on the same preprocessed tensor, with and without a server-side corruption."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as triton
from tests.service.svc_support import BN, RBN

from rbn.contract.bundle import read_meta
from rbn.contract.corruptions import corrupt
from rbn.experiments.data import LABELS
from service.http.routes.schemas.inference import AbResponse
from service.core.corrupting import content_key
from service.core.imaging import Normalizer, decode


def ab(client, data: bytes, **params):
    r = client.post("/ab", content=data, headers={"Content-Type": "image/png"}, params={"top_k": 10, **params})
    assert r.status_code == 200, r.text
    return AbResponse.model_validate(r.json())


def probs(arm) -> np.ndarray:
    p = np.zeros(len(LABELS))
    for t in arm.top_k:
        p[t.index] = t.probability
    return p


def test_both_arms_and_their_comparison(client, fmnist_samples):
    _, data, label = fmnist_samples[0]
    answer = ab(client, data, label=str(label))
    assert answer.corruption is None
    assert answer.label.index == label and answer.label.name == LABELS[label]
    (item,) = answer.results
    assert item.arms.rbn.model == RBN and item.arms.baseline.model == BN
    p, q = probs(item.arms.rbn), probs(item.arms.baseline)
    assert item.agree == (item.arms.rbn.index == item.arms.baseline.index)
    assert item.l1_distance == pytest.approx(np.abs(p - q).sum(), abs=1e-6)
    assert item.kl_divergence == pytest.approx((p * np.log(p / q)).sum(), abs=1e-6)
    assert item.correct == {"rbn": item.arms.rbn.index == label, "baseline": item.arms.baseline.index == label}
    expected = {(True, True): "both", (True, False): "rbn", (False, True): "baseline", (False, False): "neither"}
    assert item.winner == expected[(item.correct["rbn"], item.correct["baseline"])]
    # each arm is exactly what /predict gives for that model on this image
    for arm, model in ((item.arms.rbn, RBN), (item.arms.baseline, BN)):
        single = client.post("/predict", content=data, headers={"Content-Type": "image/png"},
                             params={"model": model, "top_k": 10}).json()["predictions"][0]
        assert single["index"] == arm.index
        assert single["probability"] == pytest.approx(arm.probability, rel=1e-5)
        assert single["ood"]["stats"] == pytest.approx(arm.ood.stats, rel=1e-5)


def test_label_by_name_and_without_label(client, fmnist_samples):
    _, data, label = fmnist_samples[1]
    by_name = ab(client, data, label=LABELS[label].upper())
    assert by_name.label.index == label
    plain = ab(client, data)
    assert plain.label is None and plain.results[0].correct is None and plain.results[0].winner is None


def test_corruption_is_applied_server_side_to_the_preprocessed_image(client, server, fmnist_samples, served_repo):
    _, data, _ = fmnist_samples[2]
    clean = ab(client, data)
    shifted = ab(client, data, corruption="gaussian_noise", severity=5, seed=7)
    assert shifted.corruption.model_dump() == {"name": "gaussian_noise", "severity": 5, "seed": 7}
    assert shifted.results[0].arms.rbn.ood.stats != clean.results[0].arms.rbn.ood.stats
    assert ab(client, data, corruption="gaussian_noise", severity=5, seed=7).results == shifted.results  # deterministic
    other_seed = ab(client, data, corruption="gaussian_noise", severity=5, seed=8)
    assert other_seed.results[0].arms.rbn.ood.stats != shifted.results[0].arms.rbn.ood.stats

    # Reproduce it here: decode, corrupt the 28x28 uint8 image, normalize, and run the tensor over /v2.
    meta = read_meta(served_repo / RBN)
    image = decode(data, meta.input, 10**7)
    x = Normalizer(meta.input)(corrupt(image[0], "gaussian_noise", 5, 7, first_index=content_key(image))[None, None])
    v2 = triton.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    stats = v2.infer(RBN, [tensor]).as_numpy("rbn_stats")[0]
    assert list(shifted.results[0].arms.rbn.ood.stats.values()) == pytest.approx(stats.tolist(), rel=1e-5)


def test_default_severity_and_several_files(client, fmnist_samples):
    files = [("file", (name, data, "image/png")) for name, data, _ in fmnist_samples[:3]]
    r = client.post("/ab", files=files, params={"corruption": "rotate"})
    assert r.status_code == 200, r.text
    answer = AbResponse.model_validate(r.json())
    assert answer.corruption.severity == 3
    assert [item.filename for item in answer.results] == [name for name, _, _ in fmnist_samples[:3]]


def test_ab_metrics(client, fmnist_samples):
    _, data, label = fmnist_samples[3]
    ab(client, data, corruption="contrast", severity=2, label=str(label))
    text = client.get("/metrics").text
    assert f'rbn_serve_ab_labelled_total{{corruption="contrast",model="{RBN}",severity="2"}}' in text
    assert 'rbn_serve_ab_comparisons_total{agree=' in text
    assert 'corruption="contrast"' in text


@pytest.mark.parametrize("corruption", ["gaussian_noise", "fog"])
def test_the_same_image_gets_the_same_corruption_at_any_position_and_batch_size(client, fmnist_samples, corruption):
    """Seeded by the image's pixels (and the request's seed), never its index: an image alone, at index 0 and
    at index 3 of a batch of 5 gets the same corrupted input and the same answers."""
    _, target, _ = fmnist_samples[5]
    others = [data for _, data, _ in fmnist_samples[6:10]]

    def batch(images: list[bytes]) -> list:
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        r = client.post("/ab", files=files, params={"corruption": corruption, "severity": 3, "seed": 4,
                                                    "input_png": "true", "top_k": 10})
        assert r.status_code == 200, r.text
        return r.json()["results"]

    alone = ab(client, target, corruption=corruption, severity=3, seed=4, input_png="true").model_dump(mode="json")["results"][0]
    first = batch([target, *others])[0]
    fourth = batch([*others[:3], target, others[3]])[3]
    for item in (first, fourth):
        assert item["input_png"] == alone["input_png"]
        for arm in ("rbn", "baseline"):
            assert item["arms"][arm]["top_k"] == alone["arms"][arm]["top_k"]
            assert item["arms"][arm]["ood"] == alone["arms"][arm]["ood"]
        assert item["l1_distance"] == alone["l1_distance"] and item["kl_divergence"] == alone["kl_divergence"]
    neighbours = batch([*others[:3], target, others[3]])
    assert neighbours[0]["input_png"] != neighbours[1]["input_png"]  # different images still get different draws
