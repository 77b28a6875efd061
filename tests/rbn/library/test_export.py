"""ONNX export: agreement with PyTorch, per-sample independence, determinism, both norms."""

import sys
import subprocess

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rbn.library.export import export_onnx, inference_model, stats_channels, stats_layers
from tests.rbn.random_weights import random_resnet20


def randomized(norm: str, seed: int = 0) -> torch.nn.Module:
    return random_resnet20(norm, seed)


@pytest.fixture(scope="module", params=["rbn", "bn"])
def model(request):
    return randomized(request.param)


def run(data: bytes, x: np.ndarray, outputs=("logits", "rbn_stats")):
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(list(outputs), {"input": x})


ALL = ("logits", "rbn_stats", "rbn_channel_stats")


@pytest.mark.parametrize("folded", [True, False])
@pytest.mark.parametrize("batch", [1, 64])
def test_onnx_matches_pytorch(model, folded, batch):
    x = torch.randn(batch, 1, 28, 28)
    with torch.no_grad():
        ref_logits, ref_stats, ref_channels = inference_model(model, folded=False)(x)
    logits, stats, channels = run(export_onnx(model, folded=folded), x.numpy(), ALL)
    assert stats.shape == (batch, 21) and channels.shape == (batch, 16 * 7 + 32 * 7 + 64 * 7)
    assert np.abs(logits - ref_logits.numpy()).max() <= 1e-4
    assert np.abs(stats - ref_stats.numpy()).max() <= 1e-4
    assert np.abs(channels - ref_channels.numpy()).max() <= 1e-4
    assert stats.min() > 0  # non-trivial statistics, not a constant


def test_channel_stats_are_the_layers_k_hat_and_rbn_stats_their_rms(model):
    """rbn_channel_stats splits into one K(X_hat) block per layer; rbn_stats is each block's RMS."""
    x = torch.randn(3, 1, 28, 28)
    widths = stats_channels(model, (1, 28, 28))
    assert widths == [16] * 7 + [32] * 7 + [64] * 7
    stats, channels = run(export_onnx(model), x.numpy(), ("rbn_stats", "rbn_channel_stats"))
    blocks = np.split(channels, np.cumsum(widths)[:-1], axis=1)
    np.testing.assert_allclose(np.stack([np.sqrt((b**2).mean(axis=1)) for b in blocks], axis=1), stats, rtol=1e-4)
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    with torch.no_grad():
        k_x = stem_conv(x).mean(dim=(2, 3))
        w_m = getattr(stem_norm, "center_weight", torch.zeros(16))
        k_hat = (k_x * (1 + w_m) - stem_norm.running_mean) / torch.sqrt(stem_norm.running_var + stem_norm.eps)
    np.testing.assert_allclose(blocks[0], k_hat.numpy(), rtol=1e-4, atol=1e-5)


def test_stats_are_rms_of_normalized_instance_means(model):
    """rbn_stats[:, 0] recomputed by hand from the stem's pre-norm activations."""
    x = torch.randn(3, 1, 28, 28)
    stem_conv, stem_norm = model.stem[0], model.stem[1]
    with torch.no_grad():
        pre = stem_conv(x)
        k_x = pre.mean(dim=(2, 3))
        w_m = getattr(stem_norm, "center_weight", torch.zeros(16))
        k_hat = (k_x * (1 + w_m) - stem_norm.running_mean) / torch.sqrt(stem_norm.running_var + stem_norm.eps)
        expected = k_hat.pow(2).mean(dim=1).sqrt()
    _, stats = run(export_onnx(model), x.numpy())
    np.testing.assert_allclose(stats[:, 0], expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("folded", [True, False])
def test_samples_are_independent_within_a_batch(model, folded):
    data = export_onnx(model, folded=folded)
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    before = run(data, x, ALL)
    x[1:] = np.random.default_rng(1).standard_normal((3, 1, 28, 28), dtype=np.float32) * 5 + 2
    after = run(data, x, ALL)
    for a, b in zip(before, after, strict=True):
        assert np.abs(a[0] - b[0]).max() <= 1e-6  # sample 0 is untouched by its batch-mates
        assert np.abs(a[1] - b[1]).max() > 1e-3  # the changed sample did change


def test_export_is_deterministic_and_checker_clean(model, tmp_path):
    path = tmp_path / "m.onnx"
    data = export_onnx(model, path)
    assert export_onnx(model) == data == path.read_bytes()
    graph = onnx.load_from_string(data)
    onnx.checker.check_model(graph, full_check=True)
    assert graph.opset_import[0].version >= 17
    assert [o.name for o in graph.graph.output] == ["logits", "rbn_stats", "rbn_channel_stats"]
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis


@pytest.mark.parametrize("norm", ["rbn", "bn"])
def test_every_conv_norm_pair_is_folded(norm):
    """All 21 conv -> norm pairs of ResNet-20 fold: no BatchNormalization node is left, and the convs
    are the model's own 21 (counted by op type, not total nodes, so extra outputs do not matter)."""
    from rbn.library.fold import fold_model

    model = randomized(norm)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert convs == 21
    assert fold_model(model, torch.randn(2, 1, 28, 28))[1] == convs

    def ops(folded: bool) -> dict[str, int]:
        graph = onnx.load_from_string(export_onnx(model, folded=folded)).graph
        return {op: sum(n.op_type == op for n in graph.node) for op in ("BatchNormalization", "Conv")}

    assert ops(folded=False) == {"BatchNormalization": convs, "Conv": convs}
    assert ops(folded=True) == {"BatchNormalization": 0, "Conv": convs}


def test_stats_layer_names_follow_forward_order(model):
    names = stats_layers(model, (1, 28, 28))
    assert len(names) == 21 and names[0] == "stem.1"
    # the shortcut's norm runs before the block's own norms
    assert names.index("stages.1.0.downsample.1") < names.index("stages.1.0.bn1")


def test_import_rbn_is_cheap():
    code = "import rbn, rbn.contract.bundle, rbn.contract.ood, rbn.experiments.data, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
