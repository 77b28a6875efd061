"""`rbn finetune`/`rbn evaluate` on an RGB ImageFolder (generated, seconds): a user's BN model becomes an RBN
candidate on their own data, and the result bundles (with its class names and OOD calibration) and serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from harness.procs import ROOT, RbnServe, http
from tests.rbn.imagefolders import write_imagefolder
from rbn.contract.bundle import validate_bundle
from rbn.experiments import imagefolder
from rbn.contract.bundle import InputSpec

MODEL = "tests.rbn.zoo_models:three_classes"


def rbn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "rbn.cli", *args], capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def test_split_folders_and_seeded_split(tmp_path):
    spec = InputSpec.imagenet(32)
    write_imagefolder(tmp_path / "two" / "train", per_class=4)
    write_imagefolder(tmp_path / "two" / "val", per_class=2, seed=1)
    train, val = imagefolder.load_split(tmp_path / "two", spec)
    assert (len(train), len(val), train.classes) == (12, 6, ["blue", "green", "red"])
    train, val = imagefolder.load_split(write_imagefolder(tmp_path / "one", per_class=10), spec)
    assert (len(train), len(val)) == (24, 6) and sorted(val.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    assert train.images.shape[1:] == (3, 32, 32) and train.images.dtype.name == "uint8"


@pytest.mark.timeout(900)
def test_finetune_on_an_imagefolder_then_bundle_evaluate_and_serve(tmp_path):
    data = write_imagefolder(tmp_path / "colours", per_class=14)
    out = tmp_path / "run"
    tuned = rbn("finetune", "--model", MODEL, "--data", str(data), "--epochs", "2", "--batch-size", "8", "--lr", "0.05", "--out", str(out))
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    history = json.loads((out / "history.json").read_text())
    assert history[0]["converted_layers"] == 6 and len(history) == 3
    assert (out / "labels.txt").read_text().split() == ["blue", "green", "red"]
    evaluated = rbn("evaluate", "--model", MODEL, "--weights", str(out / "final.pt"), "--data", str(data), "--out", str(tmp_path / "eval"))
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    result = json.loads((tmp_path / "eval" / "tests.rbn.zoo_models-three_classes.json").read_text())
    assert result["samples"] == 42 and set(result["per_class"]) == {"blue", "green", "red"}
    bundled = rbn("bundle", "--model", MODEL, "--weights", str(out / "final.pt"), "--labels", str(out / "labels.txt"),
                  "--name", "colours-rbn", "--repository", str(tmp_path / "repo"), "--calibration-data", str(data))
    assert bundled.returncode == 0, bundled.stderr[-2000:]
    meta = validate_bundle(tmp_path / "repo" / "colours-rbn")
    assert meta.norm == "rbn" and meta.labels == ["blue", "green", "red"] and meta.ood.source == "colours"
    server = RbnServe(tmp_path / "server.log", model_repository=tmp_path / "repo", primary_model="colours-rbn")
    try:
        server.wait_ready(timeout=180)
        status, body = http("POST", f"{server.url}/predict", (data / "red" / "1.jpg").read_bytes(), {"Content-Type": "image/jpeg"})
        assert status == 200, body[:500]
        answer = json.loads(body)["predictions"][0]
        assert answer["label"] in meta.labels and isinstance(answer["ood"]["flag"], bool)
    finally:
        server.stop()


def test_a_head_that_does_not_match_the_folder_is_a_one_line_error(tmp_path):
    data = write_imagefolder(tmp_path / "colours", per_class=4)
    out = rbn("finetune", "--model", "tests.rbn.zoo_models:all_positions", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert out.returncode == 2 and "has 5 outputs, the folder 3 classes" in out.stderr, out.stderr[-2000:]
