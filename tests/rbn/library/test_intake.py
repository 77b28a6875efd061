"""Model intake (rbn.library.intake): every spec form, and every BatchNorm2d position converted, folded and
exported exactly; an official-RBN-format checkpoint (its names and (1, C, 1, 1) shapes) loaded end to end."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from tests.rbn.random_weights import randomize_norms
from rbn.experiments import data as fmnist
from rbn.library import intake
from rbn.library.convert import convert_bn_to_rbn
from rbn.library.export import export_onnx, inference_model
from rbn.library.fold import fold_model, unfolded_norms
from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.resnet import resnet50

ZOO = "tests.rbn.zoo_models:all_positions"


def zoo(norm: str = "bn") -> nn.Module:
    model = intake.build_model(ZOO).model
    if norm == "rbn":
        convert_bn_to_rbn(model)
    return randomize_norms(model, seed=1)


def ort_logits(onnx_bytes: bytes, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"input": x.numpy()})[0]


def test_conversion_of_every_bn_position_keeps_the_logits():
    model = zoo("bn")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    converted = convert_bn_to_rbn(model)
    assert len(converted) == 6  # stem, expand, depthwise, squeeze-excitation (1x1 map), before the add, after the add
    with torch.no_grad():
        assert (model(x) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize("norm", ["bn", "rbn"])
def test_every_position_folds_where_it_can_and_exports_exactly(norm):
    model = zoo(norm)
    probe = torch.randn(2, 3, 32, 32)
    _, pairs = fold_model(model, probe)
    assert pairs == 5  # all but the norm after the residual add
    assert unfolded_norms(model, probe) == {"post_add_bn": "its input is not a conv's output (nothing to fold into)"}
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        want = inference_model(model, folded=False)(x)
    session = ort.InferenceSession(export_onnx(model, input_shape=(3, 32, 32)), providers=["CPUExecutionProvider"])
    got = session.run(["logits", "rbn_stats", "rbn_channel_stats"], {"input": x.numpy()})
    for w, g in zip(want, got):
        assert np.abs(w.numpy() - g).max() <= 1e-4
    assert got[2].shape == (5, 8 + 16 + 16 + 4 + 8 + 8)  # every norm's channels, the unfolded one included


def test_squeeze_excitation_norm_reads_the_value_itself():
    """On a 1x1 map the instance mean is the value: K(X_hat) of the SE norm is the normalised input."""
    model = zoo("rbn")
    se_bn = model.block.se.bn
    seen = {}
    se_bn.register_forward_hook(lambda m, i, o: seen.update(x=i[0]))
    with torch.no_grad():
        _, _, channel_stats = inference_model(model, folded=False)(torch.randn(2, 3, 32, 32))
    x = seen["x"].flatten(1)
    k = (1 + se_bn.center_weight) * x
    expected = (k - se_bn.running_mean) / torch.sqrt(se_bn.running_var + se_bn.eps)
    start = 8 + 16 + 16  # stem, expand, depthwise come first in forward order
    assert torch.allclose(channel_stats[:, start:start + 4], expected, atol=1e-5)


class OfficialRBN(nn.BatchNorm2d):
    """The official code's layer (ShangHua-Gao/RBN): (1, C, 1, 1) parameters, in-place centering."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.weight = nn.Parameter(torch.ones(1, c, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.center_weight = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.scale_weight = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.scale_bias = nn.Parameter(torch.ones(1, c, 1, 1))

    def forward(self, input):
        input = input.clone()  # the official `input +=` would rewrite the caller's tensor
        input += self.center_weight.view(1, self.num_features, 1, 1) * input.mean((2, 3), keepdim=True)
        output = nn.functional.batch_norm(input, self.running_mean, self.running_var, None, None, False, 0.0, self.eps)
        scale = torch.sigmoid(self.scale_weight * output.mean((2, 3), keepdim=True) + self.scale_bias)
        return self.weight * output * scale + self.bias


def official_checkpoint(model: nn.Module) -> dict:
    """model's state dict as the official training script saves a torchvision-style RBN ResNet-50:
    torchvision names, (1, C, 1, 1) RBN parameters, DataParallel's module. prefix, under 'state_dict'."""
    state = {}
    names = {"stem.0.": "conv1.", "stem.1.": "bn1."} | {f"stages.{i}.": f"layer{i + 1}." for i in range(4)}
    rbn_params = ("weight", "bias", "center_weight", "scale_weight", "scale_bias")
    rbn_layers = {n for n, m in model.named_modules() if isinstance(m, RepresentativeBatchNorm2d)}
    for key, value in model.state_dict().items():
        layer, _, param = key.rpartition(".")
        if layer in rbn_layers and param in rbn_params:
            value = value.reshape(1, -1, 1, 1)
        for ours, theirs in names.items():
            if key.startswith(ours):
                key = theirs + key[len(ours):]
        state["module." + key] = value.clone()
    return {"epoch": 100, "arch": "resnet50", "state_dict": state, "best_acc1": 0.0}


def test_the_official_layer_and_ours_agree():
    torch.manual_seed(0)
    ours = randomize_norms(nn.Sequential(RepresentativeBatchNorm2d(6)))[0]
    theirs = OfficialRBN(6).eval()
    theirs.load_state_dict({k: (v.reshape(1, -1, 1, 1) if v.dim() == 1 and "running" not in k else v)
                            for k, v in ours.state_dict().items()})
    x = torch.randn(3, 6, 5, 5)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-6)


def test_an_official_rbn_checkpoint_loads_into_plain_resnet50_exports_and_matches(tmp_path):
    torch.manual_seed(0)
    trained = randomize_norms(resnet50("rbn", num_classes=10), seed=2)
    path = tmp_path / "model_best.pth.tar"
    torch.save(official_checkpoint(trained), path)
    loaded = intake.load_model("resnet50", path, num_classes=10)  # the BN architecture: converted by the checkpoint
    assert loaded.norm == "rbn" and any("converted to RBN" in n for n in loaded.notes)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = trained(x)
        assert (loaded.model(x) - want).abs().max().item() <= 1e-5
    assert np.abs(ort_logits(export_onnx(loaded.model, input_shape=(3, 64, 64)), x) - want.numpy()).max() <= 1e-4


def test_weights_that_do_not_fit_say_so_in_one_line(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(intake.IntakeError, match="does not fit the model") as info:
        intake.load_model(ZOO, path)
    assert "\n" not in str(info.value)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(intake.IntakeError, match="not a torch file"):
        intake.load_model(ZOO, tmp_path / "junk.pt")


def test_module_factory_errors_are_one_line():
    with pytest.raises(intake.IntakeError, match="cannot import 'no_such_module_24'"):
        intake.build_model("no_such_module_24:f")
    with pytest.raises(intake.IntakeError, match="no callable 'missing'"):
        intake.build_model("tests.rbn.zoo_models:missing")
    with pytest.raises(intake.IntakeError, match="not a torch.nn.Module"):
        intake.build_model("tests.rbn.zoo_models:not_a_module")
    with pytest.raises(intake.IntakeError, match="valid forms: resnet20"):
        intake.build_model("nonsense model")


@pytest.mark.parametrize("spec", ["torchvision:resnet18", "timm:resnet18"])
def test_torchvision_and_timm_names_say_which_torch_they_need(spec):
    """CI does not install torchvision/timm (their torch is a 5.5 GB pair; docs/models.md): the names fail in one line."""
    with pytest.raises(intake.IntakeError, match=r"cannot be imported here .*torch==2\.14\.1 torchvision==0\.29\.1") as info:
        intake.build_model(spec)
    assert "\n" not in str(info.value)


def test_project_resnets_and_their_inputs():
    small = intake.build_model("resnet20-rbn")
    assert small.norm == "rbn" and small.input_shape == (1, 28, 28)
    assert (small.mean, small.std) == ((fmnist.MEAN,), (fmnist.STD,))
    big = intake.build_model("resnet50")
    assert big.norm == "bn" and big.input_shape == (3, 224, 224) and big.mean == intake.IMAGENET_MEAN


def test_efficientnet_lite0_is_pretrained_and_takes_minus_one_to_one():
    lite = intake.build_model("efficientnet-lite0")
    assert lite.norm == "bn" and lite.input_shape == (3, 224, 224)
    assert np.allclose(lite.mean, 127 / 255) and np.allclose(lite.std, 128 / 255)
    bn = next(m for m in lite.model.modules() if isinstance(m, nn.BatchNorm2d))
    assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))  # trained statistics, not init


@pytest.mark.timeout(900)
@pytest.mark.parametrize("norm", ["bn", "rbn"])
def test_project_resnet50_at_224_exports_exactly(norm):
    """ResNet-50 at its real size: the folded graph's logits equal torch eval within 1e-4."""
    model = randomize_norms(intake.build_model(f"resnet50-{norm}").model, seed=4)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(ort_logits(export_onnx(model, input_shape=(3, 224, 224)), x) - want).max() <= 1e-4
