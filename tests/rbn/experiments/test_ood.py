"""OOD scores (rbn.contract.ood), the score written into the graph (rbn.library.ood_graph) and the OOD image sets (rbn.experiments.ood_data)."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tests.rbn.random_weights import random_resnet20
from sklearn.covariance import LedoitWolf

from rbn.contract import ood
from rbn.experiments import ood_data
from rbn.experiments.ood_fit import fit_layer, fit_scorer
from rbn.library.export import export_onnx, stats_channels
from rbn.library.ood_graph import add_score_output

CHANNELS = (3, 5)


def clean_features(n: int, seed: int = 0) -> np.ndarray:
    """Correlated Gaussian features for two 'layers' of 3 and 5 channels."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(8, 8))
    return rng.normal(size=(n, 8)) @ mixing + 2.0


def test_layer_distance_is_mahalanobis_under_the_ledoit_wolf_covariance():
    x = clean_features(500)[:, :3]
    gaussian = fit_layer(x)
    inverse = np.linalg.inv(LedoitWolf().fit(x).covariance_)
    queries = clean_features(7, seed=1)[:, :3] * 1.5
    centred = queries - x.mean(axis=0)
    expected = np.einsum("ni,ij,nj->n", centred, inverse, centred)
    np.testing.assert_allclose(gaussian.distances(queries), expected, rtol=1e-9)


def test_class_conditional_distance_is_to_the_nearest_class_mean():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 200)
    x = rng.normal(size=(600, 3)) + np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0]])[labels]
    gaussian = fit_layer(x, labels)
    assert gaussian.centres.shape == (3, 3)
    # a point at a class mean is at distance ~0; the class-agnostic fit puts it far from the global mean
    at_mean = x[labels == 1].mean(axis=0, keepdims=True)
    assert gaussian.distances(at_mean)[0] == pytest.approx(0.0, abs=1e-9)
    assert fit_layer(x).distances(at_mean)[0] > 1.0


def test_logit_scores_known_values():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(ood.energy(logits), [-np.log(2), -(10 + np.log1p(np.exp(-10)))])
    np.testing.assert_allclose(ood.msp(logits), [-0.5, -1 / (1 + np.exp(-10))])
    np.testing.assert_allclose(ood.max_logit(logits), [0.0, -10.0])


def fitted(method: str, seed: int = 0) -> tuple[ood.Scorer, np.ndarray, np.ndarray]:
    features = clean_features(2000, seed)
    logits = np.random.default_rng(seed).normal(size=(2000, 4)) * 3
    labels = logits.argmax(axis=1)
    scorer = fit_scorer(method, features[:1000], labels[:1000], CHANNELS, logits[1000:], features[1000:])
    return scorer, logits[1000:], features[1000:]


@pytest.mark.parametrize("method", ood.METHODS)
def test_each_part_is_standardised_on_the_held_out_images(method):
    scorer, logits, features = fitted(method)
    scores = scorer.score(logits, features)
    parts = ("maha" in method) + ("energy" in method)
    assert scores.mean() == pytest.approx(0.0, abs=1e-9)  # every part is centred on the held-out set
    assert scores.std() <= parts + 1e-9 and scores.std() >= 0.5  # unit-std parts, positively or not correlated
    shifted = scorer.score(logits - 30 * ("energy" in method), features + 6 * ("maha" in method))
    assert (shifted > ood.threshold(scores)).mean() > 0.95  # far data is flagged


def test_threshold_flags_five_percent_of_clean_scores():
    scores = np.random.default_rng(3).normal(size=10_000)
    assert (scores > ood.threshold(scores)).mean() == pytest.approx(0.05, abs=1e-3)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: maha, maha_cc, energy, maha\\+energy, maha_cc\\+energy"):
        fit_scorer("mahalanobis", np.zeros((2, 8)), np.zeros(2), CHANNELS, np.zeros((2, 3)), np.zeros((2, 8)))


def test_rbn_stats_score_is_two_sided():
    clean = np.random.default_rng(1).normal(2.0, 0.5, size=(5000, 4))
    calibration = ood.calibrate_rms(clean)
    assert np.mean(ood.rms_score(clean, calibration) > calibration.threshold) == pytest.approx(0.05, abs=0.002)
    assert np.mean(ood.rms_score(clean - 1.0, calibration) > calibration.threshold) > 0.9


@pytest.fixture(scope="module", params=["rbn", "bn"])
def exported(request):
    model = random_resnet20(request.param, 0)
    data = export_onnx(model)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    x = torch.randn(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)).numpy()
    logits, features = session.run(["logits", "rbn_channel_stats"], {"input": x})
    return data, stats_channels(model, (1, 28, 28)), logits, features


@pytest.mark.parametrize("method", ood.METHODS)
def test_graph_score_equals_the_numpy_score(exported, method):
    data, channels, logits, features = exported
    labels = logits.argmax(axis=1)
    scorer = fit_scorer(method, features[:150], labels[:150], channels, logits[150:250], features[150:250])
    scored = add_score_output(data, scorer)
    session = ort.InferenceSession(scored, providers=["CPUExecutionProvider"])
    x = torch.randn(6, 1, 28, 28, generator=torch.Generator().manual_seed(5)).numpy() * 3
    got_logits, got_features, got_score = session.run(["logits", "rbn_channel_stats", "ood_score"], {"input": x})
    expected = scorer.score(got_logits, got_features)
    assert got_score.shape == (6, 1)
    np.testing.assert_allclose(got_score[:, 0], expected, rtol=1e-4, atol=1e-4 * (1 + np.abs(expected).max()))
    # per-sample: changing the other images leaves image 0's score alone
    x[1:] = 0.0
    again = session.run(["ood_score"], {"input": x})[0]
    assert again[0, 0] == pytest.approx(got_score[0, 0], rel=1e-5)


def test_graph_without_the_inputs_with_a_score_or_of_another_width_is_refused(exported):
    data, channels, logits, features = exported
    scorer = fit_scorer("maha+energy", features[:150], None, channels, logits[150:], features[150:])
    scored = add_score_output(data, scorer)
    with pytest.raises(ValueError, match="already has an 'ood_score' output"):
        add_score_output(scored, scorer)
    graph = onnx.load_from_string(data)
    kept = [o for o in graph.graph.output if o.name != "rbn_channel_stats"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    with pytest.raises(ValueError, match="lacks \\['rbn_channel_stats'\\]"):
        add_score_output(graph.SerializeToString(), scorer)
    energy_only = fit_scorer("energy", features[:150], None, channels, logits[150:], features[150:])
    assert add_score_output(graph.SerializeToString(), energy_only)  # energy reads only the logits
    narrower = fit_scorer("maha", features[:150, :336], None, channels[:14], logits[150:], features[150:, :336])
    with pytest.raises(ValueError, match="reads 336 channels, the graph's rbn_channel_stats has 784"):
        add_score_output(data, narrower)


def digest(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def test_validation_sets_are_deterministic_and_shaped_like_fashion_mnist():
    source = np.random.default_rng(0).integers(0, 256, (40, 28, 28), dtype=np.uint8)
    a = ood_data.validation_sets(source, n=40, seed=1)
    b = ood_data.validation_sets(source, n=40, seed=1)
    assert list(a) == ["val_gaussian_noise", "val_salt_and_pepper", "val_shapes", "val_jigsaw",
                       "val_rotated_blend", "val_heavy_corruption"]
    for name, images in a.items():
        assert images.shape == (40, 28, 28) and images.dtype == np.uint8, name
        assert digest(images) == digest(b[name]), name
    assert digest(ood_data.validation_sets(source, n=40, seed=2)["val_shapes"]) != digest(a["val_shapes"])
    # the jigsaw keeps each image's pixels, only moves them
    picked = source[np.random.default_rng(1).choice(40, size=40, replace=False)]
    assert (np.sort(a["val_jigsaw"].reshape(40, -1), axis=1) == np.sort(picked.reshape(40, -1), axis=1)).all()


def test_as_served_inverts_light_bordered_images_like_the_service():
    light = np.full((1, 56, 56), 230, np.uint8)
    light[0, 20:36, 20:36] = 10
    served = ood_data.as_served(light)
    assert served.shape == (1, 28, 28) and served[0, 0, 0] == 25 and served[0, 14, 14] == 245
    assert ood_data.as_served(255 - light)[0, 0, 0] == 25  # dark border: left as it is


def test_far_ood_test_sets_load_from_the_installed_packages():
    sets = ood_data.far_ood_sets()
    assert {k: len(v) for k, v in sets.items()} == {
        "far_ood_digits": 1797, "far_ood_faces": 200, "far_ood_textures": 1000,
        "far_ood_photos": 1000, "far_ood_uniform_noise": 1000, "far_ood_constant": 256}
    for name, images in sets.items():
        assert images.shape[1:] == (28, 28) and images.dtype == np.uint8, name
    assert sets["far_ood_constant"].max() <= 128  # auto-inverted like an upload: never light-bordered
    assert digest(ood_data.textures(20)) == digest(ood_data.textures(20))
