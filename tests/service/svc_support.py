"""Helpers for the service tests: test bundles, images, real server processes (imported by conftest and tests)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from harness.procs import RbnServe, free_port  # noqa: F401 - the tests import free_port from here

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"
RBN = "test-resnet20-rbn"
BN = "test-resnet20-bn"
BROKEN = "test-broken"

# Limits of the shared server, small enough to test cheaply.
MAX_BODY = 2 * 1024 * 1024
MAX_PIXELS = 2048 * 2048
MAX_FILES = 16


def encode(array: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **params)
    return buffer.getvalue()


class ServiceProcess(RbnServe):
    """``python -m service serve`` on the bundles of ``repo`` (harness.procs.RbnServe)."""

    ready_timeout = 90.0
    poll_interval = 0.1
    stop_timeout = 30.0
    quote_lines = None  # errors quote the whole log

    def __init__(self, repo: Path, log_path: Path, **settings) -> None:
        super().__init__(log_path, model_repository=repo, **settings)


def start_server(repo: Path, tmp: Path, **settings) -> ServiceProcess:
    return ServiceProcess(repo, tmp / "server.log", **settings).wait_ready()


def write_batch_one_bundle(repo: Path, like: Path, name: str = "test-batch-one") -> Path:
    """A bundle that passes every load-time check (schema, hash, Triton config, ONNX checker, graph inputs
    and outputs against model.json) but fails at run time with a batch of 2: a Squeeze of the batch axis
    inside the graph. ``like`` is a bundle folder whose model.json lends the labels and input spec."""
    import json

    from onnx import helper, numpy_helper

    from tests.graph_bundles import STATS_LAYERS as layers, write_graph_bundle

    fields = json.loads((like / "model.json").read_text())
    labels = len(fields["labels"])
    spec = fields["input"]
    pixels = spec["channels"] * spec["height"] * spec["width"]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(np.array([0], np.int64), "axis0"),
               numpy_helper.from_array(np.array([1], np.int64), "axis1"),
               numpy_helper.from_array(rng.standard_normal((pixels, labels)).astype(np.float32), "w_logits"),
               numpy_helper.from_array(rng.standard_normal((pixels, layers)).astype(np.float32), "w_stats")]
    nodes = [helper.make_node("Flatten", [spec["name"]], ["flat"]),
             helper.make_node("MatMul", ["flat", "w_logits"], ["scores"]),
             helper.make_node("ReduceSum", ["flat", "axis1"], ["total"]),  # (batch, 1)
             helper.make_node("Squeeze", ["total", "axis0"], ["first"]),  # (1,) only when batch == 1
             helper.make_node("Add", ["scores", "first"], ["logits"]),
             helper.make_node("MatMul", ["flat", "w_stats"], ["rbn_stats"])]
    return write_graph_bundle(repo, name, fields, nodes, weights)


HANG = 1e12  # a pixel value that makes write_slow_bundle's graph loop about forever
HANG_LIMIT = 1e13  # max_input_magnitude a server must allow for a HANG tensor to reach the graph (default 1e6)


def write_slow_bundle(repo: Path, like: Path, name: str = "test-slow", extra_iterations: int = 0) -> Path:
    """A valid bundle whose graph spins in an ONNX Loop for ``max(input) + extra_iterations`` steps
    before answering: zeros (warm-up) run at once, an image holding ``HANG`` never finishes in any
    test's lifetime, and ``extra_iterations=2**62`` makes the warm-up itself hang. How long it runs
    is set by the test, not by how fast the machine is. ``like`` lends labels and input spec."""
    import json

    from onnx import TensorProto, helper, numpy_helper

    from tests.graph_bundles import STATS_LAYERS as layers, write_graph_bundle

    fields = json.loads((like / "model.json").read_text())
    labels = len(fields["labels"])
    spec = fields["input"]
    pixels = spec["channels"] * spec["height"] * spec["width"]
    rng = np.random.default_rng(0)
    f32 = TensorProto.FLOAT
    weights = [numpy_helper.from_array(np.array(extra_iterations, np.int64), "extra"),
               numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
               numpy_helper.from_array(rng.standard_normal((pixels, labels)).astype(np.float32), "w_logits"),
               numpy_helper.from_array(rng.standard_normal((pixels, layers)).astype(np.float32), "w_stats")]
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Sin", ["v_in"], ["v_out"])],  # one cheap step
        "spin",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", f32, [1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", f32, [1])])
    nodes = [helper.make_node("ReduceMax", [spec["name"]], ["peak"], keepdims=0),
             helper.make_node("Cast", ["peak"], ["peak_steps"], to=TensorProto.INT64),
             helper.make_node("Add", ["peak_steps", "extra"], ["steps"]),
             helper.make_node("Loop", ["steps", "", "zero"], ["spun"], body=body),
             helper.make_node("Mul", ["spun", "zero"], ["nothing"]),  # the outputs depend on the loop
             helper.make_node("Flatten", [spec["name"]], ["flat"]),
             helper.make_node("MatMul", ["flat", "w_logits"], ["scores"]),
             helper.make_node("Add", ["scores", "nothing"], ["logits"]),
             helper.make_node("MatMul", ["flat", "w_stats"], ["rbn_stats"])]
    return write_graph_bundle(repo, name, fields, nodes, weights)
