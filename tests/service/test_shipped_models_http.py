"""The shipped Fashion-MNIST bundles through the real server: the product as a user meets it."""

import json

import httpx
import pytest
from svc_support import ROOT, SAMPLES, start_server

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


def test_ab_on_a_corrupted_sample_reports_both_arms_and_a_winner(shipped):
    data, label = all_samples()[0]
    body = shipped.post(f"/ab?corruption=contrast&severity=5&label={label}", content=data,
                        headers={"Content-Type": "image/png"}).json()
    result = body["results"][0]
    assert set(result["arms"]) == {"rbn", "baseline"}
    assert result["arms"]["baseline"]["model"] == "fmnist-resnet20-bn"
    assert result["winner"] in {"rbn", "baseline", "both", "neither"}
    assert result["l1_distance"] >= 0 and result["kl_divergence"] >= 0
    # an 8-bit image at 10% contrast is far from the training statistics for both arms
    assert result["arms"]["rbn"]["ood"]["flag"] and result["arms"]["baseline"]["ood"]["flag"]
