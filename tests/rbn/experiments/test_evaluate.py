from pathlib import Path

import numpy as np
import pytest

from rbn.experiments.evaluate import auroc, fpr_at_95_tpr, relative_corruption_error
from rbn.contract.ood import calibrate_rms as calibrate, combine, rms_score as score


def test_auroc_known_values():
    assert auroc(np.array([0, 1, 2.0]), np.array([3, 4, 5.0])) == 1.0
    assert auroc(np.array([3, 4, 5.0]), np.array([0, 1, 2.0])) == 0.0
    assert auroc(np.ones(10), np.ones(7)) == 0.5  # ties count half
    assert auroc(np.array([0.0, 1.0, 2.0]), np.array([1.0, 3.0])) == pytest.approx(4.5 / 6)  # 1 vs (0, 1, 2): win, tie, loss; 3 beats all
    rng = np.random.default_rng(0)
    assert abs(auroc(rng.normal(size=20000), rng.normal(1, 1, size=20000)) - 0.760) < 0.01  # Phi(1/sqrt 2)


def test_fpr_at_95_tpr():
    inside = np.arange(100.0)
    assert fpr_at_95_tpr(inside, inside + 1000) == 0.0
    assert fpr_at_95_tpr(inside, inside) == pytest.approx(0.95, abs=0.011)


def test_calibration_threshold_is_the_clean_95th_percentile():
    rng = np.random.default_rng(1)
    clean = rng.normal(2.0, 0.5, size=(5000, 4))
    cal = calibrate(clean)
    assert np.mean(score(clean, cal) > cal.threshold) == pytest.approx(0.05, abs=0.002)
    shifted_up, shifted_down = clean + 2.0, clean - 1.0
    assert np.mean(score(shifted_up, cal) > cal.threshold) > 0.99
    assert np.mean(score(shifted_down, cal) > cal.threshold) > 0.9  # two-sided by default


def test_combine_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid: mean_z, max_z, rms_z"):
        combine(np.zeros((1, 2)), "median")


def test_relative_corruption_error_is_one_for_the_baseline_itself():
    bn = {"corruption_accuracy": {"a": [0.9, 0.8], "b": [0.5, 0.4]}}
    rbn = {"corruption_accuracy": {"a": [0.95, 0.9], "b": [0.5, 0.4]}}
    assert relative_corruption_error(bn, bn)["mean"] == 1.0
    ce = relative_corruption_error(rbn, bn)
    assert ce["a"] == pytest.approx(0.15 / 0.3) and ce["b"] == pytest.approx(1.0)


def test_evaluation_feeds_the_graph_the_tensors_the_service_does():
    """Training normalises with rbn.experiments.data.normalize and evaluation with Normalizer(data.INPUT) (through
    GraphRunner), the service with its model's Normalizer(meta.input): for every shipped bundle the arrays and the
    graph's outputs are identical."""

    import onnxruntime as ort

    from rbn.experiments import data as fmnist
    from rbn.contract.bundle import onnx_path, read_meta
    from rbn.experiments.evaluate import OnnxClassifier
    from service.core.imaging import Normalizer  # what service.core.model.Model.preprocess applies

    models = Path(__file__).resolve().parents[3] / "models"
    images = (np.arange(4 * 28 * 28) % 256).astype(np.uint8).reshape(4, 28, 28)  # every pixel value
    for folder in sorted(p.parent for p in models.glob("*/model.json")):
        meta = read_meta(folder)
        served = Normalizer(meta.input)(images[:, None])
        assert meta.input.mean == [fmnist.MEAN] and meta.input.std == [fmnist.STD], folder.name
        assert fmnist.normalize(images).dtype == served.dtype and np.array_equal(fmnist.normalize(images), served)
        onnx_bytes = onnx_path(folder, meta.version).read_bytes()
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # as the classifier below: same kernels, same sums
        session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        logits = session.run(["logits"], {"input": served})[0]
        assert np.array_equal(OnnxClassifier(onnx_bytes, threads=1).predict(images).logits, logits), folder.name


def test_evaluation_and_model_predict_read_the_graph_through_one_runner():
    """``rbn evaluate`` and ``Model.predict`` (bench, peers) both run rbn.contract.graph.GraphRunner: on a
    shipped bundle they read the same outputs by name, and the answer's label is evaluation's argmax."""
    from rbn.contract.bundle import CHANNEL_STATS_NAME, LOGITS_NAME, STATS_NAME, onnx_path, read_meta
    from rbn.contract.graph import GraphRunner
    from rbn.experiments.evaluate import OnnxClassifier
    from service.core.model import Model

    folder = Path(__file__).resolve().parents[3] / "models" / "fmnist-resnet20-rbn"
    meta = read_meta(folder)
    images = (np.random.default_rng(3).integers(0, 256, (37, 28, 28))).astype(np.uint8)
    evaluated = OnnxClassifier(onnx_path(folder, meta.version).read_bytes(), threads=1, batch_size=16)
    served = Model.open(folder, intra_op_threads=1)
    assert isinstance(evaluated.graph, GraphRunner) and isinstance(served.graph, GraphRunner)
    mine, theirs = evaluated.predict(images), served.graph.outputs(images[:, None])
    for name, column in ((LOGITS_NAME, mine.logits), (STATS_NAME, mine.stats), (CHANNEL_STATS_NAME, mine.channel_stats)):
        np.testing.assert_allclose(column, theirs[name], rtol=1e-5, atol=1e-5, err_msg=name)
    answers = served.predict(images[:, None])
    assert [a.index for a in answers] == mine.labels.tolist()
