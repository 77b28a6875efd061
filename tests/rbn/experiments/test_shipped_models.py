"""The shipped bundles validate and reach their stated clean accuracy on the real test set."""

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rbn.experiments import data
from rbn.contract.bundle import discover, onnx_path, validate_bundle

MODELS = Path(__file__).resolve().parents[3] / "models"
SHIPPED = ("fmnist-resnet20-rbn", "fmnist-resnet20-bn")
TARGET_CLEAN_ACCURACY = 0.935


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundle_validates_and_is_paired(name):
    meta = validate_bundle(MODELS / name)
    assert meta.ood is not None and meta.provenance is not None and meta.evaluation is not None
    if meta.norm == "rbn":
        assert meta.baseline in SHIPPED and validate_bundle(MODELS / meta.baseline).norm == "bn"


def test_repository_holds_only_valid_bundles():
    assert {p.name for p in discover(MODELS)} >= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_clean_accuracy_on_the_real_test_set(name):
    test = data.load_split("test")  # ./run.sh test installs the Debian package
    meta = validate_bundle(MODELS / name, check_graph=False)
    session = ort.InferenceSession(str(onnx_path(MODELS / name, meta.version)), providers=["CPUExecutionProvider"])
    x = data.normalize(test.images)
    predicted = np.concatenate([session.run(["logits"], {"input": x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)])
    accuracy = float((predicted == test.labels).mean())
    assert accuracy >= TARGET_CLEAN_ACCURACY
    assert accuracy == pytest.approx(meta.evaluation["clean_accuracy"], abs=5e-4)


def graph_scores(session: ort.InferenceSession, images: np.ndarray) -> np.ndarray:
    x = data.normalize(images)
    return np.concatenate([session.run(["ood_score"], {"input": x[i : i + 500]})[0][:, 0] for i in range(0, len(x), 500)])


@pytest.mark.parametrize("name", SHIPPED)
def test_the_graph_ood_score_does_what_the_evaluation_says(name):
    """The score inside the shipped graph reproduces the bundle's evaluation summary: AUROC on every
    far-OOD test set (and ahead of 0.97), the share of clean test images it flags."""
    from rbn.experiments.evaluate import auroc
    from rbn.experiments.ood_data import far_ood_sets

    meta = validate_bundle(MODELS / name)
    assert meta.ood.kind == "graph" and meta.ood.method == meta.evaluation["ood_method"] == "maha+energy"
    session = ort.InferenceSession(str(onnx_path(MODELS / name, meta.version)), providers=["CPUExecutionProvider"])
    clean = graph_scores(session, data.load_split("test").images)
    assert float((clean > meta.ood.threshold).mean()) == pytest.approx(meta.evaluation["clean_test_flag_rate"], abs=2e-4)
    for set_name, images in far_ood_sets().items():
        scores = graph_scores(session, images)
        assert auroc(clean, scores) == pytest.approx(meta.evaluation[f"{set_name}_auroc"], abs=2e-4), set_name
        assert meta.evaluation[f"{set_name}_auroc"] >= 0.97, set_name
        assert float((scores > meta.ood.threshold).mean()) == pytest.approx(meta.evaluation[f"{set_name}_flag_rate"], abs=2e-4)
