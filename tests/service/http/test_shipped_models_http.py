"""The shipped Fashion-MNIST bundles through the real server: the product as a user meets it."""

import json

import httpx
import pytest
from tests.service.svc_support import ROOT, SAMPLES, start_server

MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    if not (MODELS / "fmnist-resnet20-rbn" / "model.json").exists():
        pytest.fail("the shipped bundles are missing from models/")
    proc = start_server(MODELS, tmp_path_factory.mktemp("shipped"))
    with httpx.Client(base_url=proc.url, timeout=60) as client:
        yield client
    proc.stop()


def all_samples():
    entries = json.loads((SAMPLES / "fashion-mnist" / "labels.json").read_text())
    return [((SAMPLES / "fashion-mnist" / e["file"]).read_bytes(), int(e["label"])) for e in entries]


def test_primary_model_is_the_rbn_bundle_paired_with_its_baseline(shipped):
    info = shipped.get("/models/fmnist-resnet20-rbn").json()
    assert info["norm"] == "rbn" and info["baseline"] == "fmnist-resnet20-bn"
    answer = shipped.post("/predict", content=all_samples()[0][0], headers={"Content-Type": "image/png"}).json()
    assert answer["model"]["name"] == "fmnist-resnet20-rbn"


def test_shipped_sample_is_classified_like_the_test_set(shipped):
    samples = all_samples()
    correct, flagged = 0, 0
    for start in range(0, len(samples), 16):
        chunk = samples[start : start + 16]
        files = [("file", (f"{i}.png", data, "image/png")) for i, (data, _) in enumerate(chunk)]
        predictions = shipped.post("/predict", files=files).json()["predictions"]
        correct += sum(p["index"] == label for p, (_, label) in zip(predictions, chunk, strict=True))
        flagged += sum(p["ood"]["flag"] for p in predictions)
    assert correct / len(samples) >= 0.9  # the model is 94% accurate on the full test set
    assert flagged / len(samples) <= 0.2  # threshold at the clean 95th percentile


def ab_counters(client) -> dict[tuple[str, ...], float]:
    """The /ab counters: {(sample name, label values in order...): value}."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("rbn_serve_ab_") and "_total{" in line:
            name, _, rest = line.partition("{")
            labels, _, value = rest.rpartition("} ")
            out[(name, *(v.split("=")[1].strip('"') for v in sorted(labels.split(","))))] = float(value)
    return out


# The first shipped sample (an ankle boot, label 9) through /ab, and what the shipped bundles answer:
# (query, winner, rbn index, baseline index, l1_distance, kl_divergence).
AB_CASES = [
    ("corruption=contrast&severity=5", "rbn", 9, 0, 1.3007699, 1.8634370),
    ("", "both", 9, 9, 0.00090219, 0.00047264),
    ("corruption=gaussian_noise&severity=4", "neither", 6, 8, 1.1612033, 0.7500715),  # noise seeded by the pixels (#26)
]


def test_ab_answers_and_counters_are_the_pinned_values(shipped):
    """Exact /ab answers of the shipped bundles on one sample, and the counters they move.

    The values depend on the shipped weights and on the corruption outputs (pinned by their golden
    hashes in tests/rbn/contract/test_corruptions.py): re-pin them here when either changes on purpose.
    """
    data, label = all_samples()[0]
    before = ab_counters(shipped)
    for query, winner, rbn_index, baseline_index, l1, kl in AB_CASES:
        body = shipped.post(f"/ab?{query}&label={label}", content=data, headers={"Content-Type": "image/png"}).json()
        result = body["results"][0]
        assert result["arms"]["baseline"]["model"] == "fmnist-resnet20-bn"
        assert (result["arms"]["rbn"]["index"], result["arms"]["baseline"]["index"]) == (rbn_index, baseline_index)
        assert result["winner"] == winner, query
        assert result["agree"] is (rbn_index == baseline_index)
        assert result["l1_distance"] == pytest.approx(l1, rel=1e-3, abs=1e-6)
        assert result["kl_divergence"] == pytest.approx(kl, rel=1e-3, abs=1e-6)
        if query:  # an 8-bit image at 10% contrast, or strong noise, is far from the training statistics
            assert result["arms"]["rbn"]["ood"]["flag"] and result["arms"]["baseline"]["ood"]["flag"]
    after = ab_counters(shipped)
    moved = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    rbn, bn = "fmnist-resnet20-rbn", "fmnist-resnet20-bn"
    # labels sorted by name: agree, baseline, corruption, model, severity / arm, corruption, model, severity
    assert moved == {
        ("rbn_serve_ab_comparisons_total", "false", bn, "contrast", rbn, "5"): 1,
        ("rbn_serve_ab_comparisons_total", "true", bn, "none", rbn, "0"): 1,
        ("rbn_serve_ab_comparisons_total", "false", bn, "gaussian_noise", rbn, "4"): 1,
        ("rbn_serve_ab_labelled_total", "contrast", rbn, "5"): 1,
        ("rbn_serve_ab_labelled_total", "none", rbn, "0"): 1,
        ("rbn_serve_ab_labelled_total", "gaussian_noise", rbn, "4"): 1,
        ("rbn_serve_ab_correct_total", "rbn", "contrast", rbn, "5"): 1,  # the winner's arm only
        ("rbn_serve_ab_correct_total", "rbn", "none", rbn, "0"): 1,  # "both": each arm once
        ("rbn_serve_ab_correct_total", "baseline", "none", rbn, "0"): 1,
    }  # "neither" adds to no ab_correct_total


def test_fine_tuned_candidate_is_served_beside_the_bn_original(shipped):
    """The third bundle: `rbn finetune` of the BN seed-0 checkpoint, A/B-paired with that BN bundle."""
    info = shipped.get("/models/fmnist-resnet20-rbn-ft").json()
    assert info["norm"] == "rbn" and info["baseline"] == "fmnist-resnet20-bn"
    recipe = info["provenance"]["recipe"]  # /models says how the candidate was made
    assert recipe["source"] == "checkpoints/resnet20-bn-s0.pt" and recipe["finetuned_epochs"] == 5
    assert recipe["calibration_lr"] == 0.5
    data, label = all_samples()[0]
    body = shipped.post(f"/ab?model=fmnist-resnet20-rbn-ft&label={label}", content=data,
                        headers={"Content-Type": "image/png"}).json()
    arms = body["results"][0]["arms"]
    assert arms["rbn"]["model"] == "fmnist-resnet20-rbn-ft" and arms["baseline"]["model"] == "fmnist-resnet20-bn"
    assert arms["rbn"]["index"] == arms["baseline"]["index"] == label  # a clean ankle boot: both right
