"""OOD scores against hand-computed numbers (rbn/contract/ood.py, service/core/ood.py): the rbn_stats score over
known per-layer statistics (dropping any one of 21 layers changes it), the calibration fit, the logit scores,
the per-layer Mahalanobis distance and the served Scorer with its linear form, each worked out on paper in the
comments; never the function under test as its own reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rbn.contract.bundle import BundleMeta, OodCalibration
from rbn.contract.ood import (LayerGaussian, Scorer, calibrate_rms, combine, energy, layer_distances, logsumexp,
                              max_logit, msp, rms_score, split_layers, standardize, threshold)
from service.core.ood import OodScorer

STATS = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
MEAN, STD = [0.0, 1.0, 2.0], [1.0, 2.0, 4.0]
# z = (stats - mean) / std = [[1, 0.5, 0.25], [0, -0.5, -0.5]]


def calibration(mean, std, how="rms_z", thr=1.0) -> OodCalibration:
    return OodCalibration(layer_mean=list(mean), layer_std=list(std), combine=how, threshold=thr, calibration_samples=10)


def test_standardize_by_hand():
    np.testing.assert_allclose(standardize(STATS, np.array(MEAN), np.array(STD)), [[1, 0.5, 0.25], [0, -0.5, -0.5]])


@pytest.mark.parametrize(("how", "expected"), [
    ("mean_z", [1.75 / 3, -1 / 3]),
    ("max_z", [1.0, 0.0]),
    ("rms_z", [math.sqrt((1 + 0.25 + 0.0625) / 3), math.sqrt((0 + 0.25 + 0.25) / 3)]),  # 0.661438, 0.408248
])
def test_combinations_by_hand(how, expected):
    z = standardize(STATS, np.array(MEAN), np.array(STD))
    np.testing.assert_allclose(combine(z, how), expected, rtol=1e-12)
    np.testing.assert_allclose(rms_score(STATS, calibration(MEAN, STD, how)), expected, rtol=1e-12)


def test_an_unknown_combination_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown combination 'sum_z'; valid: mean_z, max_z, rms_z"):
        combine(np.zeros((1, 2)), "sum_z")


def test_every_one_of_21_layers_counts_in_the_score():
    """z_l = l for l = 1..21 (mean 0, std 1): rms = sqrt(sum l^2 / 21) = sqrt(21*22*43/6 / 21) = sqrt(157.67)."""
    layers = np.arange(1.0, 22.0)
    stats = layers[None, :]
    full = rms_score(stats, calibration(np.zeros(21), np.ones(21)))
    assert full.shape == (1,) and full[0] == pytest.approx(math.sqrt(22 * 43 / 6), rel=1e-12)  # 12.5565
    for drop in range(21):  # the score of the other 20 layers: sqrt((sum l^2 - drop^2) / 20)
        rest = math.sqrt((21 * 22 * 43 / 6 - (drop + 1) ** 2) / 20)
        assert abs(full[0] - rest) > 1e-3, drop  # a score that left layer `drop` out is told apart
    one = np.zeros((1, 21))
    one[0, 20] = 21.0  # only the last layer is off: sqrt(21^2 / 21) = sqrt(21)
    assert rms_score(one, calibration(np.zeros(21), np.ones(21)))[0] == pytest.approx(math.sqrt(21), rel=1e-12)
    one = np.zeros((1, 21))
    one[0, 0] = 21.0  # only the first
    assert rms_score(one, calibration(np.zeros(21), np.ones(21)))[0] == pytest.approx(math.sqrt(21), rel=1e-12)


def test_calibration_fit_by_hand():
    """One layer, clean stats 0, 2, 4, 6: mean 3, std sqrt(5); |z| = 1.3416, 0.4472, 0.4472, 1.3416; the
    0.95 quantile (linear) of the sorted |z| sits at 2.85 of 0..3: 1.3416."""
    fitted = calibrate_rms(np.array([[0.0], [2.0], [4.0], [6.0]]))
    assert fitted.layer_mean == [3.0] and fitted.layer_std == pytest.approx([math.sqrt(5)], rel=1e-12)
    assert fitted.combine == "rms_z" and fitted.clean_quantile == 0.95 and fitted.calibration_samples == 4
    assert fitted.threshold == pytest.approx(3 / math.sqrt(5), rel=1e-12)
    flat = calibrate_rms(np.array([[2.0, 1.0], [2.0, 3.0]]), how="max_z", quantile=0.5)
    assert flat.layer_std == [1e-6, 1.0]  # a constant layer's std is floored, not zero
    assert flat.combine == "max_z" and flat.clean_quantile == 0.5
    # z = [[0, -1], [0, 1]]; max_z per image: 0 and 1; their 0.5 quantile: 0.5
    assert flat.threshold == pytest.approx(0.5, rel=1e-12)


def test_logit_scores_by_hand():
    logits = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0]])
    # row 0: logsumexp = log(1 + 3) = log 4; row 1: 1000 + log 2 (no overflow)
    np.testing.assert_allclose(logsumexp(logits), [math.log(4), 1000 + math.log(2)], rtol=1e-12)
    np.testing.assert_allclose(energy(logits), [-math.log(4), -1000 - math.log(2)], rtol=1e-12)
    np.testing.assert_allclose(msp(logits), [-0.75, -0.5], rtol=1e-12)  # 3 / 4 and 1 / 2
    np.testing.assert_allclose(max_logit(logits), [-math.log(3), -1000.0], rtol=1e-12)


def test_layer_gaussian_distance_is_to_the_nearest_mean():
    g = LayerGaussian(whitener=np.diag([1.0, 0.5]), centres=np.array([[0.0, 0.0], [2.0, 2.0]]))
    # x @ W: [2, 4] -> [2, 2] (0 from centre 1); [0, 0] -> 0; [1, 0] -> [1, 0]: 1 to centre 0, 5 to centre 1
    np.testing.assert_allclose(g.distances(np.array([[2.0, 4.0], [0.0, 0.0], [1.0, 0.0], [-1.0, 2.0]])),
                               [0.0, 0.0, 1.0, 2.0])  # [-1, 2] -> [-1, 1]: 2 to centre 0, 10 to centre 1


def test_split_layers_by_channel_count():
    parts = split_layers(np.arange(6.0).reshape(2, 3), [2, 1])
    np.testing.assert_array_equal(parts[0], [[0, 1], [3, 4]])
    np.testing.assert_array_equal(parts[1], [[2], [5]])
    with pytest.raises(ValueError, match="channel stats have 3 columns, the layers 4"):
        split_layers(np.zeros((1, 3)), [2, 2])


def scorer(feature_weight=1.0, energy_weight=0.0) -> Scorer:
    """Two one-channel layers, identity whitener, mean 0: d_l = x_l^2."""
    unit = LayerGaussian(whitener=np.eye(1), centres=np.zeros((1, 1)))
    return Scorer(method="maha+energy", gaussians=(unit, unit), channels=(1, 1), layer_mean=np.array([1.0, 2.0]),
                  layer_std=np.array([2.0, 4.0]), feature_std=0.5, feature_weight=feature_weight,
                  energy_mean=-1.0, energy_std=0.5, energy_weight=energy_weight)


def test_the_served_score_by_hand():
    stats = np.array([[3.0, 2.0]])  # d = [9, 4]; z = [(9 - 1) / 2, (4 - 2) / 4] = [4, 0.5]; mean 2.25
    logits = np.array([[0.0, math.log(3.0)]])  # energy -log 4
    assert scorer().score(logits, stats)[0] == pytest.approx(2.25 / 0.5, rel=1e-12)  # 4.5
    assert layer_distances(scorer().gaussians, stats, (1, 1)).tolist() == [[9.0, 4.0]]
    # energy part: 2 * (-log 4 - (-1)) / 0.5 = -1.545177
    both = scorer(energy_weight=2.0).score(logits, stats)[0]
    assert both == pytest.approx(4.5 + 2 * (1 - math.log(4)) / 0.5, rel=1e-12)
    assert scorer(feature_weight=0.0, energy_weight=2.0).score(logits, stats)[0] == pytest.approx(
        2 * (1 - math.log(4)) / 0.5, rel=1e-12)


def test_the_linear_form_matches_the_score():
    alpha, constant = scorer().layer_coefficients()
    # alpha_l = 1 / (L * s_l * s_f) = 1 / (2 * [2, 4] * 0.5) = [0.5, 0.25]; constant = -(0.5 * 1 + 0.25 * 2) = -1
    np.testing.assert_allclose(alpha, [0.5, 0.25], rtol=1e-12)
    assert constant == pytest.approx(-1.0, rel=1e-12)
    assert 0.5 * 9 + 0.25 * 4 + constant == pytest.approx(4.5)


def test_threshold_is_the_clean_quantile():
    assert threshold(np.arange(101.0)) == 95.0
    assert threshold(np.arange(101.0), 0.5) == 50.0


META = dict(name="m", architecture="resnet20", norm="rbn", labels=["a", "b"],
            input=dict(channels=1, height=2, width=2, mean=[0.0], std=[1.0]), stats_layers=["l1", "l2", "l3"],
            onnx_sha256="0" * 64)


def test_the_service_scores_rbn_stats_bundles_with_their_calibration():
    meta = BundleMeta(**META, ood=calibration(MEAN, STD, "rms_z", thr=0.5).model_dump())
    scorer_ = OodScorer(meta)
    assert scorer_.calibrated and not scorer_.in_graph and scorer_.threshold == 0.5
    scores = scorer_.scores(STATS)
    np.testing.assert_allclose(scores, [math.sqrt(0.4375), math.sqrt(1 / 6)], rtol=1e-12)  # 0.661, 0.408
    flags = [scorer_.verdict(row, s).flag for row, s in zip(STATS, scores, strict=True)]
    assert flags == [True, False]  # 0.661 > 0.5, 0.408 < 0.5
    verdict = scorer_.verdict(STATS[0], scores[0])
    assert verdict.stats == {"l1": 1.0, "l2": 2.0, "l3": 3.0} and verdict.threshold == 0.5


def test_an_uncalibrated_bundle_scores_energy_and_flags_nothing():
    scorer_ = OodScorer(BundleMeta(**META))
    assert not scorer_.calibrated and scorer_.threshold is None and scorer_.scores(STATS) is None
    np.testing.assert_allclose(scorer_.uncalibrated_scores(np.array([[0.0, math.log(3.0)]])), [-math.log(4)])
    assert scorer_.verdict(STATS[0], None, -1.0).flag is None


def test_a_graph_bundle_reads_the_graphs_own_score_as_float64():
    ood = {"kind": "graph", "method": "maha+energy", "threshold": 1.5, "calibration_samples": 10, "fit_samples": 20}
    scorer_ = OodScorer(BundleMeta(**META, ood=ood))
    assert scorer_.calibrated and scorer_.in_graph and scorer_.threshold == 1.5 and scorer_.reason is None
    graph = np.array([[1.25], [1.75]], np.float32)  # the graph's ood_score output, (N, 1)
    scores = scorer_.scores(STATS, graph)
    assert scores.dtype == np.float64 and scores.shape == (2,) and scores.tolist() == [1.25, 1.75]
    assert [scorer_.verdict(row, s).flag for row, s in zip(STATS, scores, strict=True)] == [False, True]


def test_a_calibrated_bundle_gives_no_reason_and_a_stats_row_must_match_its_layers():
    scorer_ = OodScorer(BundleMeta(**META, ood=calibration(MEAN, STD).model_dump()))
    assert scorer_.reason is None and scorer_.uncalibrated_scores(np.zeros((1, 2))) is None
    with pytest.raises(ValueError):  # a graph whose rbn_stats has another layer count than model.json names
        scorer_.verdict(np.array([1.0, 2.0]), 0.5)


F32 = np.array([0.1, 0.7, 0.3, 0.9], np.float32)  # what ONNX Runtime hands over: float32


def test_float32_inputs_are_scored_in_float64():
    """The graph's outputs are float32; every score is computed in float64 from those values (the references
    below are the float32 values widened, then computed in double precision by hand)."""
    wide = [float(v) for v in F32]
    # the 0.95 quantile of 4 sorted values sits at 2.85: v[2] + 0.85 * (v[3] - v[2]) with v = 0.1, 0.3, 0.7, 0.9
    assert threshold(F32) == pytest.approx(wide[1] + 0.85 * (wide[3] - wide[1]), rel=0, abs=1e-15)
    logits = F32.reshape(2, 2)
    lse = [math.log(math.exp(wide[0]) + math.exp(wide[1])), math.log(math.exp(wide[2]) + math.exp(wide[3]))]
    for got in (logsumexp(logits), energy(logits), msp(logits), max_logit(logits)):
        assert got.dtype == np.float64
    np.testing.assert_allclose(logsumexp(logits), lse, rtol=1e-15)
    np.testing.assert_allclose(msp(logits), [-math.exp(wide[1] - lse[0]), -math.exp(wide[3] - lse[1])], rtol=1e-14)
    np.testing.assert_allclose(max_logit(logits), [-wide[1], -wide[3]], rtol=0)
    stats = F32.reshape(2, 2)
    score = rms_score(stats, calibration([0.0, 0.0], [1.0, 1.0]))
    assert score.dtype == np.float64
    np.testing.assert_allclose(score, [math.sqrt((wide[0] ** 2 + wide[1] ** 2) / 2),
                                       math.sqrt((wide[2] ** 2 + wide[3] ** 2) / 2)], rtol=1e-15)
    parts = split_layers(stats, [1, 1])
    assert all(p.dtype == np.float64 for p in parts)
    g = LayerGaussian(whitener=np.eye(2, dtype=np.float32), centres=np.zeros((1, 2), np.float32))
    assert g.distances(stats).dtype == np.float64


def test_calibration_of_float32_stats_is_computed_in_float64():
    clean = np.array([[0.1], [0.2], [0.7]], np.float32)
    wide = [float(v) for v in clean[:, 0]]
    mean = sum(wide) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in wide) / 3)
    fitted = calibrate_rms(clean)
    assert fitted.layer_mean[0] == pytest.approx(mean, rel=1e-15)
    assert fitted.layer_std[0] == pytest.approx(std, rel=1e-15)


def test_a_scorer_with_fewer_gaussians_than_layers_is_refused():
    unit = LayerGaussian(whitener=np.eye(1), centres=np.zeros((1, 1)))
    with pytest.raises(ValueError):
        layer_distances((unit, unit), np.zeros((1, 3)), (1, 1, 1))
