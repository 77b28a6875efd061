"""RepresentativeBatchNorm2d against an independent re-implementation of the paper's formulas."""

import pytest
import torch

from rbn.library.layer import RepresentativeBatchNorm2d
from rbn.library.norms import NORM_LAYERS, get_norm_layer

C = 5


def reference_forward(x, p, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """RBN written out from the formulas, sharing no code with rbn.library.layer."""
    w_m, w_v, w_b, gamma, beta = (p[k].view(1, -1, 1, 1) for k in ("w_m", "w_v", "w_b", "gamma", "beta"))
    k_x = x.mean(dim=(2, 3), keepdim=True)
    x1 = x + w_m * k_x
    if training:
        mean = x1.mean(dim=(0, 2, 3))
        var = x1.var(dim=(0, 2, 3), unbiased=False)
        n = x1.numel() / x1.shape[1]
        new_mean = (1 - momentum) * running_mean + momentum * mean.detach()
        new_var = (1 - momentum) * running_var + momentum * var.detach() * n / (n - 1)
    else:
        mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
    x_hat = (x1 - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + eps)
    k_hat = x_hat.mean(dim=(2, 3), keepdim=True)
    y = gamma * x_hat * torch.sigmoid(w_v * k_hat + w_b) + beta
    return y, new_mean, new_var


def random_params(seed):
    g = torch.Generator().manual_seed(seed)
    u = lambda lo, hi: (torch.rand(C, generator=g) * (hi - lo) + lo).requires_grad_()  # noqa: E731
    return {"w_m": u(-0.8, 0.8), "w_v": u(-2, 2), "w_b": u(-1, 1), "gamma": u(0.5, 1.5), "beta": u(-0.5, 0.5)}


def layer_with(p, running_mean, running_var):
    layer = RepresentativeBatchNorm2d(C)
    with torch.no_grad():
        layer.center_weight.copy_(p["w_m"])
        layer.scale_weight.copy_(p["w_v"])
        layer.scale_bias.copy_(p["w_b"])
        layer.weight.copy_(p["gamma"])
        layer.bias.copy_(p["beta"])
        layer.running_mean.copy_(running_mean)
        layer.running_var.copy_(running_var)
    return layer


@pytest.mark.parametrize("n", [1, 8])
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference_outputs_running_stats_and_gradients(n, training):
    torch.manual_seed(n)
    x = (torch.randn(n, C, 6, 7) * 2 + torch.randn(1, C, 1, 1)).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    p = random_params(n)
    running_mean, running_var = torch.randn(C) * 0.3, torch.rand(C) + 0.5
    layer = layer_with(p, running_mean, running_var).train(training)

    y = layer(x)
    y_ref, mean_ref, var_ref = reference_forward(x_ref, p, running_mean, running_var, training)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_mean, mean_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer.running_var, var_ref, rtol=1e-5, atol=1e-6)

    weights = torch.randn_like(y)
    (y * weights).sum().backward()
    (y_ref * weights).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for ours, ref in (("center_weight", "w_m"), ("scale_weight", "w_v"), ("scale_bias", "w_b"), ("weight", "gamma"), ("bias", "beta")):
        grad = getattr(layer, ours).grad
        assert grad is not None and grad.abs().sum() > 0, ours
        torch.testing.assert_close(grad, p[ref].grad, rtol=1e-4, atol=1e-5, msg=ours)


def test_forward_does_not_modify_its_input():
    layer = layer_with(random_params(0), torch.zeros(C), torch.ones(C)).train()
    x = torch.randn(4, C, 5, 5)
    before = x.clone()
    layer(x)
    layer.eval()(x)
    assert torch.equal(x, before)


def test_initialisation_follows_the_paper():
    layer = RepresentativeBatchNorm2d(C)
    assert torch.all(layer.center_weight == 0) and torch.all(layer.scale_weight == 0)
    assert torch.all(layer.scale_bias == 1) and torch.all(layer.weight == 1) and torch.all(layer.bias == 0)


def test_accepts_batchnorm_constructor_arguments():
    layer = RepresentativeBatchNorm2d(C, eps=1e-3, momentum=None, affine=False, track_running_stats=True)
    assert layer.weight is None and layer.eps == 1e-3
    layer.train()(torch.randn(3, C, 4, 4))
    layer.train()(torch.randn(3, C, 4, 4))
    assert int(layer.num_batches_tracked) == 2


def test_loads_official_checkpoint_with_4d_parameters():
    source = layer_with(random_params(3), torch.randn(C), torch.rand(C) + 0.5)
    official = {k: (v.view(1, C, 1, 1) if v.dim() == 1 and k in ("weight", "bias", "center_weight", "scale_weight", "scale_bias") else v)
                for k, v in source.state_dict().items()}  # fmt: skip
    target = RepresentativeBatchNorm2d(C)
    target.load_state_dict(official)
    x = torch.randn(2, C, 4, 4)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_loads_plain_batchnorm_checkpoint_keeping_its_function():
    bn = torch.nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    rbn = RepresentativeBatchNorm2d(C)
    rbn.load_state_dict(bn.state_dict())
    x = torch.randn(3, C, 4, 4)
    torch.testing.assert_close(rbn.eval()(x), bn.eval()(x), rtol=1e-5, atol=1e-6)


def test_norm_registry_rejects_unknown_names_listing_valid_ones():
    assert get_norm_layer("RBN") is RepresentativeBatchNorm2d
    with pytest.raises(ValueError, match="valid names: bn, rbn"):
        get_norm_layer("layernorm")
    for cls in NORM_LAYERS.values():
        assert cls(7)(torch.randn(2, 7, 3, 3)).shape == (2, 7, 3, 3)


def test_sync_batchnorm_conversion_refuses_rbn_layers_that_torch_would_silently_replace():
    from torch import nn

    from rbn.library.layer import convert_sync_batchnorm

    def net(norm: type[nn.Module]) -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 4, 3), norm(4), nn.Sequential(nn.Conv2d(4, 4, 1), norm(4)))

    # The hazard: torch's converter takes RBN for a BatchNorm and drops its calibrations.
    swapped = nn.SyncBatchNorm.convert_sync_batchnorm(net(RepresentativeBatchNorm2d))
    assert type(swapped[1]) is nn.SyncBatchNorm and not hasattr(swapped[1], "center_weight")
    with pytest.raises(TypeError, match=r"\(1, 2\.1\)"):
        convert_sync_batchnorm(net(RepresentativeBatchNorm2d))
    plain = convert_sync_batchnorm(net(nn.BatchNorm2d))
    assert [type(m) for m in (plain[1], plain[2][1])] == [nn.SyncBatchNorm, nn.SyncBatchNorm]
