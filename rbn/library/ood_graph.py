"""Write a calibrated rbn.contract.ood.Scorer into an exported graph as its `ood_score` output.

The score then travels with the bundle: the service, Triton or any Open Inference Protocol
client running the same model.onnx gets the same number, with no calibration file to keep in
step. The nodes read the graph's own `logits` and `rbn_channel_stats` outputs; the constants
(whiteners, centres, standardisation) are initialisers. Torch-free.

Per layer l (channels [a, b) of `rbn_channel_stats`; consecutive layers of equal width share one
batched MatMul):
    y_l = x[:, a:b] @ W_l;  d_l = min_k sum_c (y_l - centre_lk)^2          (N,)
then ood_score = [d_1..d_L] @ alpha + beta * logsumexp(logits) + gamma   (N, 1),
the linear form rbn.contract.ood.Scorer.layer_coefficients gives (energy = -logsumexp).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rbn.contract.bundle import CHANNEL_STATS_NAME, LOGITS_NAME, SCORE_NAME
from rbn.contract.ood import Scorer

_PREFIX = "ood/"


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray, dtype=np.float32) -> str:
        full = _PREFIX + name
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype), full))
        return full

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        full = output if output == SCORE_NAME else _PREFIX + output
        self.nodes.append(helper.make_node(op, inputs, [full], name=full, **attrs))
        return full


def _groups(channels: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(first layer, layer count, width) of each run of consecutive layers with the same width.

    A ResNet's layers come in runs (seven of 16 channels, seven of 32, seven of 64), and one batched
    MatMul per run costs a handful of graph nodes instead of six per layer.
    """
    runs: list[tuple[int, int, int]] = []
    for i, width in enumerate(channels):
        if runs and runs[-1][2] == width:
            first, count, _ = runs[-1]
            runs[-1] = (first, count + 1, width)
        else:
            runs.append((i, 1, width))
    return runs


def _run_distances(b: _Builder, tag: str, start: int, gaussians: list, width: int) -> str:
    """(N, m) squared Mahalanobis distances of ``m`` consecutive layers of ``width`` channels each."""
    m = len(gaussians)
    stop = start + m * width
    x = b.node("Slice", [CHANNEL_STATS_NAME, b.const(f"{tag}/start", [start], np.int64),
                         b.const(f"{tag}/stop", [stop], np.int64), b.const(f"{tag}/axis", [1], np.int64)], f"{tag}/x")
    x4 = b.node("Reshape", [x, b.const(f"{tag}/shape", [0, m, 1, width], np.int64)], f"{tag}/x4")  # (N, m, 1, C)
    whiteners = np.stack([g.whitener for g in gaussians])  # (m, C, C)
    y = b.node("MatMul", [x4, b.const(f"{tag}/whiteners", whiteners)], f"{tag}/y")  # (N, m, 1, C)
    centres = np.stack([g.centres for g in gaussians])  # (m, K, C)
    diff = b.node("Sub", [y, b.const(f"{tag}/centres", centres)], f"{tag}/diff")  # (N, m, K, C)
    squares = b.node("ReduceSumSquare", [diff, b.const(f"{tag}/axis3", [3], np.int64)], f"{tag}/sq", keepdims=0)
    return b.node("ReduceMin", [squares, b.const(f"{tag}/axis2", [2], np.int64)], f"{tag}/d", keepdims=0)  # (N, m)


def add_score_output(onnx_bytes: bytes, scorer: Scorer) -> bytes:
    """The same graph with an extra output `ood_score` (N, 1) equal to ``scorer.score``."""
    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    outputs = {o.name for o in graph.output}
    needed = {LOGITS_NAME} | ({CHANNEL_STATS_NAME} if scorer.feature_weight else set())
    if not needed <= outputs:
        raise ValueError(f"the graph lacks {sorted(needed - outputs)}; re-export it with rbn.library.export")
    if SCORE_NAME in outputs:
        raise ValueError(f"the graph already has an {SCORE_NAME!r} output")
    if scorer.feature_weight:
        declared = next(o for o in graph.output if o.name == CHANNEL_STATS_NAME).type.tensor_type.shape.dim[1].dim_value
        if declared != sum(scorer.channels):
            raise ValueError(f"the scorer reads {sum(scorer.channels)} channels, the graph's {CHANNEL_STATS_NAME} has {declared}")
    b = _Builder()
    terms: list[str] = []
    if scorer.feature_weight:
        bounds = np.concatenate([[0], np.cumsum(scorer.channels)])
        distances = [
            _run_distances(b, f"run{k}", int(bounds[first]), list(scorer.gaussians[first:first + count]), width)
            for k, (first, count, width) in enumerate(_groups(scorer.channels))
        ]
        stacked = distances[0] if len(distances) == 1 else b.node("Concat", distances, "distances", axis=1)  # (N, L)
        alpha, constant = scorer.layer_coefficients()
        terms.append(b.node("MatMul", [stacked, b.const("alpha", alpha.reshape(-1, 1))], "feature"))
    else:
        constant = 0.0
    if scorer.energy_weight:
        # energy e = -logsumexp; w * (e - m) / s = (-w / s) * lse - w * m / s
        lse = b.node("ReduceLogSumExp", [LOGITS_NAME, b.const("axis1", [1], np.int64)], "lse", keepdims=1)
        beta = -scorer.energy_weight / scorer.energy_std
        terms.append(b.node("Mul", [lse, b.const("beta", [[beta]])], "energy"))
        constant -= scorer.energy_weight * scorer.energy_mean / scorer.energy_std
    total = terms[0] if len(terms) == 1 else b.node("Add", terms, "sum")
    b.node("Add", [total, b.const("gamma", [[constant]])], SCORE_NAME)
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.initializers)
    graph.output.append(helper.make_tensor_value_info(SCORE_NAME, TensorProto.FLOAT, ["batch", 1]))
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()
