"""Pure functions of the answers: softmax/top-k, the OOD block, A/B distances, corruption of batches."""

from __future__ import annotations

import numpy as np
import pytest

from rbn.contract.bundle import BundleMeta
from rbn.contract.corruptions import corrupt
from rbn.contract.bundle import GraphOodCalibration
from rbn.contract.ood import calibrate_rms as calibrate, rms_score as score
from service.core.answers import verdict
from service.core.compare import kl_divergence, l1_distance
from service.core.corrupting import content_key, corrupt_images
from service.core.model import parse_label
from service.core.errors import InvalidArgument
from service.core.ood import OodScorer
from service.core.predictions import describe, softmax, top_k


def meta(ood=None) -> BundleMeta:
    return BundleMeta(name="m", architecture="a", norm="rbn", labels=["a", "b", "c"],
                      input=dict(channels=1, height=8, width=8, mean=[0.0], std=[1.0]),
                      stats_layers=["l1", "l2", "l3"], onnx_sha256="0" * 64, ood=ood)


def test_scorer_matches_rbn_ood():
    rng = np.random.default_rng(0)
    for how in ("mean_z", "max_z", "rms_z"):
        calibration = calibrate(rng.random((100, 3)), how)
        scorer = OodScorer(meta(calibration))
        stats = rng.random((5, 3)).astype(np.float32)
        np.testing.assert_allclose(scorer.scores(stats), score(stats, calibration))
        block = scorer.verdict(stats[0], scorer.scores(stats)[0]).to_json()
        assert block["flag"] == (block["score"] > calibration.threshold) and list(block["stats"]) == ["l1", "l2", "l3"]


def test_graph_scored_bundle_reads_the_graph_output():
    """A bundle with the score in its graph: the service takes `ood_score` as it is, flag against the threshold."""
    calibration = GraphOodCalibration(method="maha+energy", threshold=1.5, calibration_samples=10, fit_samples=20)
    scorer = OodScorer(meta(calibration))
    graph_score = np.array([[0.25], [2.0]], np.float32)
    np.testing.assert_array_equal(scorer.scores(np.zeros((2, 3)), graph_score), [0.25, 2.0])
    blocks = [scorer.verdict(np.zeros(3), s).to_json() for s in scorer.scores(np.zeros((2, 3)), graph_score)]
    assert [(b["score"], b["flag"], b["threshold"]) for b in blocks] == [(0.25, False, 1.5), (2.0, True, 1.5)]


def test_uncalibrated_bundle_reports_energy_unflagged_and_says_why():
    """No OOD calibration in model.json: no calibrated score (so no metric, no flag), the logits' energy
    reported as uncalibrated, the reason in the answer; never a made-up threshold."""
    scorer = OodScorer(meta())
    assert scorer.scores(np.ones((2, 3))) is None
    logits = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    # by hand: -ln(3) and -ln(e^2 + 2)
    np.testing.assert_allclose(scorer.uncalibrated_scores(logits), [-1.0986123, -2.2395447], atol=1e-6)
    block = scorer.verdict(np.ones(3), None, -1.0986123).to_json()
    assert block == {"score": -1.0986123, "calibrated": False, "method": "energy", "flag": None, "threshold": None,
                     "reason": block["reason"], "stats": {"l1": 1.0, "l2": 1.0, "l3": 1.0}}
    assert "no OOD calibration" in block["reason"] and "--calibration-data" in block["reason"]
    calibrated = OodScorer(meta(GraphOodCalibration(method="energy", threshold=1.5, calibration_samples=10, fit_samples=20)))
    assert calibrated.uncalibrated_scores(logits) is None
    assert set(calibrated.verdict(np.ones(3), 0.5).to_json()) == {"score", "flag", "threshold", "stats"}


def test_softmax_top_k_describe():
    logits = np.array([[1000.0, 1001.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    p = softmax(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert top_k(p, 2).tolist() == [[1, 0], [0, 1]]  # ties keep the lower index first
    answers = [a.to_json() for a in describe(p, np.zeros((2, 3), np.float32), None, ["a", "b", "c"], OodScorer(meta()), 5)]
    assert answers[0]["label"] == "b" and len(answers[0]["top_k"]) == 3


def test_ab_distances_and_verdict():
    p = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    q = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(l1_distance(p, q), [0.0, 2.0])
    kl = kl_divergence(p, q)
    assert kl[0] == pytest.approx(0.0, abs=1e-9) and kl[1] > 20  # near-disjoint supports: large but finite
    assert [verdict(True, True), verdict(True, False), verdict(False, True), verdict(False, False)] == \
        ["both", "rbn", "baseline", "neither"]


def test_corrupt_images_matches_rbn_corruptions_per_image():
    images = np.random.default_rng(0).integers(0, 256, (3, 1, 12, 12), dtype=np.uint8)
    out = corrupt_images(images, "rotate", 4, seed=5)
    for i in range(3):
        np.testing.assert_array_equal(out[i, 0], corrupt(images[i, 0], "rotate", 4, 5, first_index=content_key(images[i])))
    # seeded by the pixels, not the position: the same image corrupts the same anywhere in any batch
    twice = np.concatenate([images[2:], images[:1], images[2:]])
    again = corrupt_images(twice, "gaussian_noise", 3, seed=5)
    np.testing.assert_array_equal(again[0], again[2])
    np.testing.assert_array_equal(again[0], corrupt_images(images[2:], "gaussian_noise", 3, seed=5)[0])
    assert content_key(images[0]) != content_key(images[1]) and content_key(images[0]) == content_key(images[0].copy())
    rgb = np.repeat(images[:1], 3, axis=1)
    shifted = corrupt_images(rgb, "rotate", 4, seed=5)
    assert (shifted[0, 0] == shifted[0, 1]).all() and (shifted[0, 1] == shifted[0, 2]).all()  # same draw per channel


def test_parse_label():
    labels = ["T-shirt", "Trouser", "Bag"]
    assert parse_label(None, labels) is None and parse_label("", labels) is None
    assert parse_label("2", labels) == 2 and parse_label(" 1 ", labels) == 1
    assert parse_label(" trouser ", labels) == 1 and parse_label("BAG", labels) == 2
    for bad in ("²", "①", "٣", "3", "-1", "--1", "-", "1.0", "Hat"):  # '²'.isdigit() is True, int('²') raises
        with pytest.raises(InvalidArgument):
            parse_label(bad, labels)
