"""A user's model -> bundle: ImageNet input spec, OOD calibration from an ImageFolder recorded in model.json
(source, counts, held-out false-positive rate), or none at all (uncalibrated); the rbn CLI's --model forms."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from tests.rbn.imagefolders import write_imagefolder
from tests.rbn.random_weights import randomize_norms
from rbn.contract.bundle import GraphOodCalibration, onnx_path, validate_bundle
from rbn.contract.preprocess import Normalizer
from rbn.experiments import imagefolder, model_bundle
from rbn.library import intake as intake_mod

ZOO = "tests.rbn.zoo_models:all_positions"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def zoo_intake(size: int = 64):
    loaded = intake_mod.build_model(ZOO)
    randomize_norms(loaded.model, seed=3)
    loaded.input_size = size
    return loaded


def test_bundle_with_calibration_records_what_it_was_fitted_on(tmp_path):
    folder = write_imagefolder(tmp_path / "my-photos", per_class=15)
    loaded = zoo_intake()
    bundle = model_bundle.bundle_model(loaded, tmp_path / "repo", "zoo-bn", [f"c{i}" for i in range(5)], calibration_data=folder)
    meta = validate_bundle(bundle)
    assert isinstance(meta.ood, GraphOodCalibration) and meta.ood.method == "maha+energy"
    assert meta.ood.source == "my-photos"
    assert (meta.ood.fit_samples, meta.ood.calibration_samples, meta.ood.heldout_samples) == (27, 9, 9)
    assert 0.0 <= meta.ood.heldout_fpr <= 1.0
    assert meta.input.resize == "shorter_side_crop" and (meta.input.height, meta.input.resize_size) == (64, 73)
    # the bundle's graph computes what torch computes on the service's own preprocessing of these files
    images = imagefolder.load(folder, meta.input)
    x = Normalizer(meta.input)(images.images)
    session = ort.InferenceSession(str(onnx_path(bundle, 1)), providers=["CPUExecutionProvider"])
    logits, score = session.run(["logits", "ood_score"], {"input": x})
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(x)).numpy()
    assert np.abs(logits - want).max() <= 1e-4
    assert score.shape == (45, 1)


def test_bundle_without_calibration_data_is_uncalibrated(tmp_path):
    bundle = model_bundle.bundle_model(zoo_intake(), tmp_path / "repo", "zoo-bn", [f"c{i}" for i in range(5)])
    meta = validate_bundle(bundle)
    assert meta.ood is None
    session = ort.InferenceSession(str(onnx_path(bundle, 1)), providers=["CPUExecutionProvider"])
    assert "ood_score" not in {o.name for o in session.get_outputs()}


def test_too_few_calibration_images_is_a_one_line_error(tmp_path):
    folder = write_imagefolder(tmp_path / "few", per_class=3)
    with pytest.raises(imagefolder.ImageFolderError, match="needs at least 30"):
        model_bundle.bundle_model(zoo_intake(), tmp_path / "repo", "zoo-bn", [f"c{i}" for i in range(5)], calibration_data=folder)


def test_imagenet_labels_are_the_first_synset_names_and_unique():
    labels = model_bundle.imagenet_labels()
    assert len(labels) == len(set(labels)) == 1000
    assert labels[281:286] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert labels[967] == "espresso"


def rbn(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "rbn.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=cwd)


@pytest.mark.timeout(600)
def test_cli_export_convert_and_pair_from_a_module_factory(tmp_path):
    out = rbn("export", "--model", ZOO, str(tmp_path / "zoo.onnx"))
    assert out.returncode == 0, out.stderr
    assert "not folded: post_add_bn: its input is not a conv's output" in out.stderr
    converted = rbn("convert", "--model", ZOO, "--out", str(tmp_path / "zoo-rbn.pt"))
    assert converted.returncode == 0 and "6 BatchNorm2d layers converted" in converted.stdout, converted.stderr
    loaded = intake_mod.load_model(ZOO, tmp_path / "zoo-rbn.pt")
    assert loaded.norm == "rbn"
    pair = rbn("bundle", "--model", ZOO, "--pair", "--name", "zoo", "--repository", str(tmp_path / "repo"))
    assert pair.returncode == 0, pair.stderr
    bn, rbn_meta = validate_bundle(tmp_path / "repo" / "zoo-bn"), validate_bundle(tmp_path / "repo" / "zoo-rbn")
    assert (bn.norm, rbn_meta.norm, rbn_meta.baseline) == ("bn", "rbn", "zoo-bn")
    assert rbn_meta.evaluation["conversion_max_abs_logit_difference"] <= 1e-5
    assert bn.labels == [f"class_{i}" for i in range(5)] and bn.ood is None


def test_cli_errors_are_one_line(tmp_path):
    for args, message in [
        (["export", "--model", "torchvision:resnet18", str(tmp_path / "x.onnx")], "torchvision cannot be imported here"),
        (["bundle", "--model", ZOO, "--name", "z", "--repository", str(tmp_path), "--calibration-data", str(tmp_path / "none")], "no such folder"),
        (["export", str(tmp_path / "x.onnx"), "--weights", "w.pt"], "give either a checkpoint"),
    ]:
        out = rbn(*args)
        assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
