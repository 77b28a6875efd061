"""``bn_to_rbn`` and ``convert_bn_to_rbn`` exactly: every constructor argument of the BatchNorm carried over
(eps, momentum, affine, running statistics, the counter, dtype), gamma divided by sigmoid(w_b) = sigmoid(1)
and beta copied as they are, the training mode kept, the eval output the BatchNorm's own formula computed by
hand, the layers named by their qualified names (a top-level one without a leading dot), and only plain
BatchNorm2d converted."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rbn.library.convert import bn_to_rbn, convert_bn_to_rbn
from rbn.library.layer import RepresentativeBatchNorm2d

SIGMOID_1 = 1 / (1 + math.exp(-1))  # 0.7310585786300049


def trained_bn(channels: int = 3, dtype=torch.float32, **kwargs) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, dtype=dtype, **kwargs)
    with torch.no_grad():
        if bn.affine:
            bn.weight.copy_(torch.tensor([0.5, -2.0, 3.0][:channels], dtype=dtype))
            bn.bias.copy_(torch.tensor([0.25, 1.0, -0.5][:channels], dtype=dtype))
        if bn.track_running_stats:
            bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.5][:channels], dtype=dtype))
            bn.running_var.copy_(torch.tensor([4.0, 0.25, 9.0][:channels], dtype=dtype))
            bn.num_batches_tracked.fill_(37)
    return bn.eval()


def test_every_argument_and_tensor_carries_over():
    bn = trained_bn(eps=1e-3, momentum=0.3)
    rbn = bn_to_rbn(bn)
    assert type(rbn) is RepresentativeBatchNorm2d
    assert (rbn.num_features, rbn.eps, rbn.momentum, rbn.affine, rbn.track_running_stats) == (3, 1e-3, 0.3, True, True)
    assert rbn.running_mean.tolist() == [1.0, -1.0, 0.5]
    assert rbn.running_var.tolist() == [4.0, 0.25, 9.0]
    assert rbn.num_batches_tracked.item() == 37
    assert rbn.bias.tolist() == [0.25, 1.0, -0.5]
    expected_gamma = [0.5 / SIGMOID_1, -2.0 / SIGMOID_1, 3.0 / SIGMOID_1]
    assert rbn.weight.tolist() == pytest.approx(expected_gamma, rel=1e-6)
    assert rbn.scale_bias.tolist() == [1.0, 1.0, 1.0]
    assert rbn.center_weight.tolist() == [0.0, 0.0, 0.0] and rbn.scale_weight.tolist() == [0.0, 0.0, 0.0]


def test_the_eval_output_is_the_batchnorm_formula_by_hand():
    bn = trained_bn(eps=1e-3)
    rbn = bn_to_rbn(bn).eval()
    x = torch.arange(3 * 2 * 2, dtype=torch.float32).reshape(1, 3, 2, 2) - 5.0
    mean = torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)
    var = torch.tensor([4.0, 0.25, 9.0]).view(1, 3, 1, 1)
    gamma = torch.tensor([0.5, -2.0, 3.0]).view(1, 3, 1, 1)
    beta = torch.tensor([0.25, 1.0, -0.5]).view(1, 3, 1, 1)
    expected = (x - mean) / torch.sqrt(var + 1e-3) * gamma + beta
    with torch.no_grad():
        torch.testing.assert_close(rbn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("momentum", [None, 0.01])
def test_momentum_carries_over_even_none(momentum):
    assert bn_to_rbn(trained_bn(momentum=momentum)).momentum == momentum


def test_the_training_mode_is_kept():
    bn = trained_bn()
    assert bn_to_rbn(bn).training is False
    bn.train()
    assert bn_to_rbn(bn).training is True


def test_the_dtype_is_the_batchnorms():
    rbn = bn_to_rbn(trained_bn(dtype=torch.float64))
    assert {p.dtype for p in rbn.parameters()} == {torch.float64}
    assert rbn.running_mean.dtype == torch.float64 and rbn.running_var.tolist() == [4.0, 0.25, 9.0]


def test_without_affine_there_is_no_gamma_to_carry():
    rbn = bn_to_rbn(trained_bn(affine=False))
    assert rbn.affine is False and rbn.weight is None and rbn.bias is None
    assert rbn.running_mean.tolist() == [1.0, -1.0, 0.5] and rbn.num_batches_tracked.item() == 37


def test_without_running_statistics_none_are_made_up():
    rbn = bn_to_rbn(trained_bn(track_running_stats=False))
    assert rbn.track_running_stats is False
    assert rbn.running_mean is None and rbn.running_var is None and rbn.num_batches_tracked is None
    assert rbn.weight.tolist() == pytest.approx([0.5 / SIGMOID_1, -2.0 / SIGMOID_1, 3.0 / SIGMOID_1], rel=1e-6)


def test_a_layer_with_no_tensor_at_all_is_converted_in_the_default_dtype():
    bn = nn.BatchNorm2d(2, affine=False, track_running_stats=False)
    rbn = bn_to_rbn(bn)
    assert rbn.scale_bias.dtype == torch.get_default_dtype() and rbn.scale_bias.tolist() == [1.0, 1.0]


def test_the_names_are_qualified_and_only_plain_batchnorms_convert():
    class Sub(nn.BatchNorm2d):  # a subclass may have its own forward: left alone
        pass

    model = nn.Sequential()
    model.add_module("top", nn.BatchNorm2d(2))
    inner = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), Sub(2), nn.BatchNorm1d(2))
    model.add_module("block", inner)
    model.add_module("done", RepresentativeBatchNorm2d(2))
    assert convert_bn_to_rbn(model) == ["top", "block.1"]
    assert type(model.top) is RepresentativeBatchNorm2d and type(inner[1]) is RepresentativeBatchNorm2d
    assert type(inner[2]) is Sub and type(inner[3]) is nn.BatchNorm1d


def test_a_model_that_is_one_batchnorm_converts_nothing_it_cannot_replace():
    bn = nn.BatchNorm2d(2)
    assert convert_bn_to_rbn(bn) == []  # the root itself has no parent to be replaced in
    assert type(bn) is nn.BatchNorm2d


def test_the_rbn_lives_on_the_batchnorms_device():
    """Only a CPU here: torch's "meta" device (shapes without storage) stands for another device."""
    rbn = bn_to_rbn(nn.BatchNorm2d(3, device="meta").eval())
    assert {t.device.type for t in [*rbn.parameters(), *rbn.buffers()]} == {"meta"}
    assert rbn.weight.shape == (3,) and rbn.scale_bias.shape == (3,)
