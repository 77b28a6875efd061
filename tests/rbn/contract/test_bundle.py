"""Bundle writer/validator round trip and one clear error per kind of fault."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from pathlib import Path

from rbn.contract.bundle import BundleError, BundleMeta, graph_outputs, triton_config, validate_bundle, write_bundle
from rbn.experiments.data import LABELS, MEAN, STD
from rbn.library.export import export_onnx, inference_model, stats_channels, stats_layers
from rbn.contract.ood import calibrate_rms
from rbn.library.resnet import resnet20
from tests.bundles import graph_scored, legacy


def meta_for(model, name, norm, stats):
    return {
        "name": name, "architecture": "resnet20", "norm": norm, "labels": list(LABELS),
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [MEAN], "std": [STD]},
        "stats_layers": stats_layers(model, (1, 28, 28)), "stats_channels": stats_channels(model, (1, 28, 28)),
        "ood": calibrate_rms(stats).model_dump(),
    }  # fmt: skip


@pytest.fixture()
def bundle(tmp_path):
    torch.manual_seed(0)
    model = resnet20("rbn").eval()
    with torch.no_grad():
        _, stats, _ = inference_model(model)(torch.randn(64, 1, 28, 28))
    return write_bundle(tmp_path, meta_for(model, "tiny-rbn", "rbn", stats.numpy()), export_onnx(model))


def test_round_trip(bundle):
    meta = validate_bundle(bundle)
    assert meta.name == "tiny-rbn" and len(meta.stats_layers) == 21 and meta.ood.combine == "rms_z"
    config = (bundle / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "dynamic_batching" in config and "dims: [ 21 ]" in config
    assert 'name: "rbn_channel_stats", data_type: TYPE_FP32, dims: [ 784 ]' in config


def test_graph_scored_bundle_declares_and_checks_its_score_output(tmp_path):
    meta, onnx_bytes = graph_scored(resnet20("rbn").eval(), "scored-rbn", "rbn")
    folder = write_bundle(tmp_path, meta, onnx_bytes)
    assert validate_bundle(folder).ood.kind == "graph"
    assert 'name: "ood_score", data_type: TYPE_FP32, dims: [ 1 ]' in (folder / "config.pbtxt").read_text()
    # the same metadata over a graph without the score output is refused, naming the output
    with pytest.raises(BundleError, match="ood_score"):
        validate_bundle(write_bundle(tmp_path / "unscored", meta, export_onnx(resnet20("rbn").eval())))


def test_a_real_0_1_bundle_description_still_parses_and_keeps_its_triton_config():
    """model.json and config.pbtxt exactly as 0.1 shipped them (tests/rbn/fixtures/bundle-0.1, from
    the landed 0.1 models/fmnist-resnet20-rbn): no 'kind', no stats_channels, the rbn_stats score."""
    folder = Path(__file__).parents[1] / "fixtures" / "bundle-0.1"
    meta = BundleMeta(**json.loads((folder / "model.json").read_text()))
    assert meta.ood.kind == "rbn_stats_rms" and meta.ood.method == "rms_z" and meta.stats_channels is None
    assert graph_outputs(meta) == {"logits": [10], "rbn_stats": [21]}
    assert triton_config(meta) == (folder / "config.pbtxt").read_text()


def test_legacy_bundle_without_channel_stats_still_validates(tmp_path):
    """Bundles written before `rbn_channel_stats` and the graph score keep working with their old score."""
    meta, onnx_bytes = legacy(resnet20("bn").eval(), "old-bn", "bn")
    assert "stats_channels" not in meta and meta["ood"].get("kind") is None
    validated = validate_bundle(write_bundle(tmp_path, meta, onnx_bytes))
    assert validated.ood.kind == "rbn_stats_rms" and validated.stats_channels is None


@pytest.mark.parametrize("change, message", [
    (lambda ood: ood.update(threshold=float("nan")), "threshold must be a finite number"),
    (lambda ood: ood.pop("threshold"), "ood.graph.threshold"),
    (lambda ood: ood.update(kind="magic"), "ood"),
    (lambda ood: ood.update(extra_field=1), "extra_field"),
    (lambda ood: ood.update(method="x" * 10_000), "ood.graph.method"),
])
def test_ill_formed_graph_calibration_is_refused(tmp_path, change, message):
    meta, onnx_bytes = graph_scored(resnet20("rbn").eval(), "scored-rbn", "rbn")
    folder = write_bundle(tmp_path, meta, onnx_bytes)
    doc = json.loads((folder / "model.json").read_text())
    change(doc["ood"])
    (folder / "model.json").write_text(json.dumps(doc))
    with pytest.raises(BundleError, match=message):
        validate_bundle(folder)


def edit_json(bundle, change):
    path = bundle / "model.json"
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: (b / "1" / "model.onnx").write_bytes(b"not onnx"), "sha256"),
        (lambda b: (b / "model.json").write_text("{"), "not valid JSON"),
        (lambda b: edit_json(b, lambda d: d.pop("labels")), "field labels"),
        (lambda b: edit_json(b, lambda d: d.update(name="other")), "folder name must match"),
        (lambda b: edit_json(b, lambda d: d["stats_layers"].pop()), "ood calibration has 21 layers"),
        (lambda b: edit_json(b, lambda d: d["stats_channels"].pop()), "stats_channels has 20 entries"),
        (lambda b: edit_json(b, lambda d: d.update(labels=d["labels"][:5])), "config.pbtxt does not match"),
        (lambda b: (b / "config.pbtxt").unlink(), "missing config.pbtxt"),
        (lambda b: (b / "1" / "model.onnx").unlink(), "missing 1/model.onnx"),
    ],
)
def test_faults_give_one_clear_error(bundle, damage, message):
    damage(bundle)
    with pytest.raises(BundleError, match=message):
        validate_bundle(bundle)


def test_graph_metadata_mismatch_is_caught(tmp_path):
    """Valid hash and config, but the ONNX file has other labels than model.json claims."""
    model = resnet20("bn", num_classes=5).eval()
    meta = meta_for(resnet20("bn").eval(), "mismatch", "bn", np.random.rand(32, 21) + 1)
    with pytest.raises(BundleError, match="output 'logits' has shape"):
        validate_bundle(write_bundle(tmp_path, meta, export_onnx(model)))


def test_validator_command_prints_one_line_per_bundle(bundle, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    result = subprocess.run([sys.executable, "-m", "service.cli", "validate", str(bundle), str(bad)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("OK ") and "tiny-rbn" in lines[0]
    assert lines[1].startswith("FAIL") and "no model.json" in lines[1]
    assert "Traceback" not in result.stderr
