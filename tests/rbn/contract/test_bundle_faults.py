"""Bundle faults a correct hash does not catch: a graph the ONNX checker rejects, a fixed batch
dimension, a BN bundle naming a baseline. Each is refused with its own message by the validator
(`rbn-serve validate`), and the server skips it at start-up without failing the valid ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from rbn.contract.bundle import BundleError, read_meta, validate_bundle, write_bundle
from service.core.repository import scan

ROOT = Path(__file__).resolve().parents[3]
LABELS = [f"class{i}" for i in range(3)]
LAYERS = ["layer0", "layer1"]


def fields(name: str, norm: str = "bn", baseline: str | None = None) -> dict:
    return {"name": name, "architecture": "linear", "norm": norm, "baseline": baseline, "labels": LABELS,
            "input": {"channels": 1, "height": 4, "width": 4, "mean": [0.5], "std": [0.25]}, "stats_layers": LAYERS}


def graph(batch: int | str = "batch", broken: bool = False) -> bytes:
    """input [batch, 1, 4, 4] -> logits [batch, 3], rbn_stats [batch, 2]; ``broken``: a node reads a tensor
    that nothing defines (serialises fine, fails the checker)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w_logits"),
               numpy_helper.from_array(rng.standard_normal((16, 2)).astype(np.float32), "w_stats")]
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w_logits"], ["logits"]),
             helper.make_node("MatMul", ["undefined" if broken else "flat", "w_stats"], ["rbn_stats"])]
    f32 = TensorProto.FLOAT
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", f32, [batch, 1, 4, 4])],
                          [helper.make_tensor_value_info("logits", f32, [batch, 3]),
                           helper.make_tensor_value_info("rbn_stats", f32, [batch, 2])], weights)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture()
def repo(tmp_path) -> Path:
    """One valid bundle and the three faulty ones, each with a hash that matches its graph."""
    write_bundle(tmp_path, fields("good"), graph())
    write_bundle(tmp_path, fields("checker-fails"), graph(broken=True))
    write_bundle(tmp_path, fields("fixed-batch"), graph(batch=1))
    bn_with_baseline = write_bundle(tmp_path, fields("bn-with-baseline"), graph())
    meta = json.loads((bn_with_baseline / "model.json").read_text())
    meta["baseline"] = "good"  # written by hand: the writer's own validation refuses it
    (bn_with_baseline / "model.json").write_text(json.dumps(meta))
    return tmp_path


MESSAGES = {
    "checker-fails": "checker-fails: model.onnx fails the ONNX checker",
    "fixed-batch": "fixed-batch: input 'input' has shape [1, 1, 4, 4], expected [batch, 1, 4, 4]",
    "bn-with-baseline": "only an RBN bundle names a baseline",
}


def test_the_valid_bundle_is_valid(repo):
    assert validate_bundle(repo / "good").name == "good"


@pytest.mark.parametrize("name", sorted(MESSAGES))
def test_each_fault_is_refused_with_its_reason_not_the_hash(repo, name):
    with pytest.raises(BundleError) as info:
        validate_bundle(repo / name)
    assert MESSAGES[name] in str(info.value)
    assert "sha256" not in str(info.value)


def test_writer_refuses_a_bn_bundle_naming_a_baseline(tmp_path):
    with pytest.raises(Exception, match="only an RBN bundle names a baseline"):
        write_bundle(tmp_path, fields("bn", baseline="other"), graph())


def test_the_server_scan_skips_what_it_can_see_and_the_runtime_the_rest(repo):
    """The server scans without the ONNX checker (no onnx on the serving path): the metadata fault is
    caught by the scan, the graph faults when ONNX Runtime loads the bundle."""
    from service.core.runtime import ModelRuntime

    found = scan(repo)
    assert sorted(b.name for b in found.bundles) == ["checker-fails", "fixed-batch", "good"]
    assert set(found.errors) == {"bn-with-baseline"}
    assert MESSAGES["bn-with-baseline"] in found.errors["bn-with-baseline"]
    by_name = {b.name: b for b in found.bundles}
    with pytest.raises(BundleError, match="checker-fails: ONNX Runtime cannot load the graph"):
        ModelRuntime(by_name["checker-fails"].meta, by_name["checker-fails"].onnx_file, "cpu")
    with pytest.raises(BundleError, match=r"fixed-batch: input 'input' has shape \[1, 1, 4, 4\], expected \[batch, 1, 4, 4\]"):
        ModelRuntime(by_name["fixed-batch"].meta, by_name["fixed-batch"].onnx_file, "cpu")
    good = ModelRuntime(by_name["good"].meta, by_name["good"].onnx_file, "cpu")
    logits, stats = good.run(np.zeros((5, 1, 4, 4), np.float32))[:2]
    assert logits.shape == (5, 3) and stats.shape == (5, 2)


def test_validate_command_fails_each_faulty_bundle(repo):
    names = ["good", *sorted(MESSAGES)]
    done = subprocess.run([sys.executable, "-m", "service", "validate", *(str(repo / n) for n in names)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "FAIL", "FAIL", "FAIL"]
    for line, name in zip(lines[1:], sorted(MESSAGES), strict=True):
        assert MESSAGES[name] in line, line
    assert read_meta(repo / "good").norm == "bn"
