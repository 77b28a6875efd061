"""Eval-mode folding of conv -> norm pairs into one conv plus per-(sample, channel) affine.

With a = 1/sqrt(var + eps) and b = -mean * a per channel, put a and b into the conv: Y0.
For RBN, with m = K(Y0):

    X_hat   = Y0 + w_m * (m - b)
    K(X_hat) = k = (1 + w_m) * m - w_m * b
    z = sigmoid(w_v * k + w_b)
    Y = s * Y0 + t,  s = gamma * z,  t = s * (k - m) + beta

so an RBN costs one spatial mean and one multiply-add over the tensor. For plain BN the whole
affine goes into the conv, as usual, and the statistic k = (K(Y) - beta) / gamma is a side
branch that leaves the main path a bare Conv (ONNX Runtime still fuses Conv+ReLU).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rbn.layer import RepresentativeBatchNorm2d, instance_mean


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.detach().clone().view(1, -1, 1, 1)


def _fold_scale_shift(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    a = torch.rsqrt(norm.running_var + norm.eps)
    conv_bias = conv.bias if conv.bias is not None else torch.zeros_like(a)
    return a, (conv_bias - norm.running_mean) * a


def _conv_with(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor) -> nn.Conv2d:
    folded = copy.deepcopy(conv)
    folded.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    folded.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return folded


class FoldedConvRBN(nn.Module):
    """conv -> RBN in eval mode, folded."""

    def __init__(self, conv: nn.Conv2d, norm: RepresentativeBatchNorm2d) -> None:
        super().__init__()
        a, b = _fold_scale_shift(conv, norm)
        self.conv = _conv_with(conv, conv.weight * a.view(-1, 1, 1, 1), b)
        w_m = norm.center_weight.detach()
        gamma = norm.weight.detach() if norm.affine else torch.ones_like(a)
        beta = norm.bias.detach() if norm.affine else torch.zeros_like(a)
        self.register_buffer("k_scale", _col(1 + w_m))  # k = k_scale * m + k_shift
        self.register_buffer("k_shift", _col(-w_m * b))
        self.register_buffer("gate_weight", _col(norm.scale_weight))
        self.register_buffer("gate_bias", _col(norm.scale_bias))
        self.register_buffer("gamma", _col(gamma))
        self.register_buffer("beta", _col(beta))
        self.stats_recorder = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.conv(x)
        m = instance_mean(y0)
        k = self.k_scale * m + self.k_shift
        s = self.gamma * torch.sigmoid(self.gate_weight * k + self.gate_bias)
        t = s * (k - m) + self.beta
        if self.stats_recorder is not None:
            self.stats_recorder.add(k)
        return y0 * s + t


class FoldedConvBN(nn.Module):
    """conv -> BatchNorm in eval mode, folded the ordinary way, with the statistic on the side."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        a, b = _fold_scale_shift(conv, norm)
        gamma = norm.weight.detach() if norm.affine else torch.ones_like(a)
        beta = norm.bias.detach() if norm.affine else torch.zeros_like(a)
        self.conv = _conv_with(conv, conv.weight * (a * gamma).view(-1, 1, 1, 1), gamma * b + beta)
        # k = (K(Y) - beta) / gamma; a channel with gamma == 0 carries no information about k.
        safe = gamma.abs() > 1e-12
        inv_gamma = torch.where(safe, 1.0 / torch.where(safe, gamma, torch.ones_like(gamma)), torch.zeros_like(gamma))
        self.register_buffer("k_scale", _col(inv_gamma))
        self.register_buffer("k_shift", _col(-beta * inv_gamma))
        self.stats_recorder = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.stats_recorder is not None:
            self.stats_recorder.add(self.k_scale * instance_mean(y) + self.k_shift)
        return y


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Module:
    if isinstance(norm, RepresentativeBatchNorm2d):
        return FoldedConvRBN(conv, norm)
    return FoldedConvBN(conv, norm)


def _is_pair(conv: nn.Module, norm: nn.Module) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(norm, nn.BatchNorm2d)
        and norm.track_running_stats
        and conv.out_channels == norm.num_features
    )


def fold_model(model: nn.Module) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each conv -> norm pair folded.

    Pairs are found where the forward order is known from the structure: consecutive
    children of an ``nn.Sequential``, and ``convN``/``bnN`` attribute pairs in a block (the
    layout of rbn.resnet and torchvision's ResNets). The conv is replaced by the folded module
    and the norm by ``nn.Identity``; a norm not preceded by a conv keeps its plain form.
    Returns the copy and the number of folded pairs.
    """
    folded = copy.deepcopy(model).eval()
    count = 0
    for module in list(folded.modules()):
        if isinstance(module, nn.Sequential):
            names = [n for n, _ in module.named_children()]
            for first, second in zip(names, names[1:]):
                conv, norm = getattr(module, first), getattr(module, second)
                if _is_pair(conv, norm):
                    setattr(module, first, _fold_pair(conv, norm))
                    setattr(module, second, nn.Identity())
                    count += 1
        else:
            for name, conv in list(module.named_children()):
                if name.startswith("conv"):
                    norm = getattr(module, "bn" + name[4:], None)
                    if norm is not None and _is_pair(conv, norm):
                        setattr(module, name, _fold_pair(conv, norm))
                        setattr(module, "bn" + name[4:], nn.Identity())
                        count += 1
    return folded, count
