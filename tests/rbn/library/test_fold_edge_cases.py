"""Folding beyond the shipped ResNets: conv biases, pre-activation blocks, shared conv outputs,
zero-initialised gammas, norms without running statistics, and the caller's model left alone."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.rbn.random_weights import randomize_norms
from rbn.library.export import ExportError, export_onnx, inference_model
from rbn.library.fold import fold_model
from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.resnet import resnet20, resnet50

NORMS = {"rbn": RepresentativeBatchNorm2d, "bn": nn.BatchNorm2d}


class Head(nn.Module):
    def __init__(self, body: nn.Module, channels: int) -> None:
        super().__init__()
        self.body = body
        self.fc = nn.Linear(channels, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


class PreActBlock(nn.Module):
    """bn1 -> relu -> conv1 -> bn2 -> relu -> conv2, plus identity: bn1 does not follow conv1."""

    def __init__(self, c: int, norm) -> None:
        super().__init__()
        self.bn1, self.conv1 = norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.bn2, self.conv2 = norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        out = self.conv1(torch.relu(self.bn1(x)))
        return x + self.conv2(torch.relu(self.bn2(out)))


class SharedConvOutput(nn.Module):
    """The conv's output feeds its norm and, separately, a skip path: folding would change the skip."""

    def __init__(self, c: int, norm) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, c, 3, padding=1), norm(c)
        self.conv2 = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(torch.relu(self.bn1(y))) + y


def onnx_vs_eager(model: nn.Module, shape=(1, 12, 12)):
    x = torch.randn(5, *shape)
    with torch.no_grad():
        want_logits, want_stats, _ = inference_model(model, folded=False)(x)
    session = ort.InferenceSession(export_onnx(model, input_shape=shape), providers=["CPUExecutionProvider"])
    logits, stats = session.run(["logits", "rbn_stats"], {"input": x.numpy()})
    return np.abs(logits - want_logits.numpy()).max(), np.abs(stats - want_stats.numpy()).max()


@pytest.mark.parametrize("norm", ["rbn", "bn"])
def test_conv_with_bias_folds_exactly(norm):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1, bias=True), NORMS[norm](6), nn.ReLU())
    with torch.no_grad():
        body[0].bias.uniform_(-2, 2)
    model = randomize_norms(Head(body, 6))
    assert max(onnx_vs_eager(model)) <= 1e-4


@pytest.mark.parametrize("norm", ["rbn", "bn"])
def test_pre_activation_norms_are_not_folded_into_the_next_conv(norm):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), PreActBlock(4, NORMS[norm]))
    model = randomize_norms(Head(body, 4))
    _, pairs = fold_model(model, torch.randn(2, 1, 12, 12))
    # bn1 reads the stem conv's output, which the residual also reads: not folded; bn2 reads conv1's alone: folded
    assert pairs == 1
    assert max(onnx_vs_eager(model)) <= 1e-4


def test_a_conv_output_used_twice_is_left_unfolded():
    model = randomize_norms(Head(SharedConvOutput(4, RepresentativeBatchNorm2d), 4))
    assert fold_model(model, torch.randn(2, 1, 12, 12))[1] == 0  # folding bn1 would change the skip path
    assert max(onnx_vs_eager(model)) <= 1e-4
    session = ort.InferenceSession(export_onnx(model, input_shape=(1, 12, 12), folded=False), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((1, 1, 12, 12), np.float32)})[1].shape == (1, 1)


def test_zero_initialised_gammas_keep_bn_statistics_exact():
    torch.manual_seed(0)
    model = resnet20("bn").eval()  # residual norms start with gamma = 0
    assert any(torch.all(m.weight == 0) for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
    assert max(onnx_vs_eager(model, (1, 28, 28))) <= 1e-4


def test_norms_without_running_statistics_are_refused():
    model = Head(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)), 4)
    with pytest.raises(ExportError, match="track_running_stats"):
        export_onnx(model, input_shape=(1, 12, 12))


def test_export_leaves_the_callers_model_as_it_was():
    model = resnet20("rbn").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- other architectures: ResNet-50, affine-free norms, grouped and depthwise convs ----------------------
def folded_onnx_vs_eager(model: nn.Module, shape: tuple[int, int, int], batch: int = 3) -> tuple[float, float]:
    """Largest |ONNX (folded) - eager (unfolded)| of logits and of rbn_stats, relative to the eager range."""
    x = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = inference_model(model, folded=False)(x)
    session = ort.InferenceSession(export_onnx(model, input_shape=shape), providers=["CPUExecutionProvider"])
    logits, stats = session.run(["logits", "rbn_stats"], {"input": x.numpy()})
    return tuple(float(np.abs(got - ref.numpy()).max() / (1 + np.abs(ref.numpy()).max()))
                 for got, ref in ((logits, want[0]), (stats, want[1])))


def test_resnet50_folds_every_pair_and_matches_eager_torch():
    """The GPU benchmark's ResNet-50 (bottleneck blocks, 7x7 stem, max-pool): all 53 conv -> RBN pairs
    fold, and the exported graph computes what the model does. RBN only, the costlier fold (a BN
    ResNet-50 adds ~20 s for what ResNet-20's BN tests already cover); a small input keeps it cheap."""
    torch.manual_seed(0)
    model = randomize_norms(resnet50("rbn", in_channels=3, num_classes=10))
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs == 53
    assert fold_model(model, torch.randn(2, 3, 32, 32))[1] == convs
    logits_error, stats_error = folded_onnx_vs_eager(model, (3, 32, 32))
    assert logits_error <= 1e-4 and stats_error <= 1e-4


@pytest.mark.parametrize("norm", ["rbn", "bn"])
def test_affine_free_norms_fold_exactly(norm):
    """``affine=False``: no gamma or beta (RBN keeps its calibration weights)."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), NORMS[norm](6, affine=False), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, bias=False), NORMS[norm](6, affine=False), nn.ReLU())
    model = randomize_norms(Head(body, 6))
    assert all(m.weight is None for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert fold_model(model, torch.randn(2, 1, 12, 12))[1] == 2
    assert max(folded_onnx_vs_eager(model, (1, 12, 12))) <= 1e-5


@pytest.mark.parametrize("norm", ["rbn", "bn"])
def test_grouped_and_depthwise_convs_fold_exactly(norm):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), NORMS[norm](8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=4), NORMS[norm](8), nn.ReLU(),  # grouped
                         nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), NORMS[norm](8), nn.ReLU())  # depthwise
    model = randomize_norms(Head(body, 8))
    assert fold_model(model, torch.randn(2, 2, 12, 12))[1] == 3
    assert max(folded_onnx_vs_eager(model, (2, 12, 12))) <= 1e-5
