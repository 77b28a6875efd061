"""Eval-mode folding of conv -> norm pairs into one conv plus per-(sample, channel) affine.

With a = 1/sqrt(var + eps) and b = -mean * a per channel, put a and b into the conv: Y0.
For RBN, with m = K(Y0):

    X_hat   = Y0 + w_m * (m - b)
    K(X_hat) = k = (1 + w_m) * m - w_m * b
    z = sigmoid(w_v * k + w_b)
    Y = s * Y0 + t,  s = gamma * z,  t = s * (k - m) + beta

so an RBN costs one spatial mean and one multiply-add over the tensor (with a conv bias c, the
shift uses the BN part only: X_hat = Y0 + w_m * (m + mean * a)). For plain BN the whole affine
goes into the conv, as usual, and the statistic k = (K(Y) - beta) / gamma is a side branch. That
branch still costs something in ONNX Runtime: the spatial mean makes it leave its blocked layout
after every conv and keeps ReLU out of the conv (see BENCHMARKS.md, "BN + rbn_stats").
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from rbn.library.layer import ReportsStats, RepresentativeBatchNorm2d, instance_mean


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


class FoldedConvRBN(nn.Module, ReportsStats):
    """conv -> RBN in eval mode, folded."""

    def __init__(self, conv: nn.Conv2d, norm: RepresentativeBatchNorm2d) -> None:
        super().__init__()
        a, b = _fold_scale_shift(conv, norm)
        self.conv = _conv_with(conv, conv.weight * a.view(-1, 1, 1, 1), b)
        w_m = norm.center_weight.detach()
        gamma = norm.weight.detach() if norm.affine else torch.ones_like(a)
        beta = norm.bias.detach() if norm.affine else torch.zeros_like(a)
        self.register_buffer("k_scale", _col(1 + w_m))  # k = k_scale * m + k_shift
        # K(X_hat) = m + w_m * a * K(X), and a * K(X) = m + mean * a (the conv's own bias cancels)
        self.register_buffer("k_shift", _col(w_m * (norm.running_mean * a)))
        self.register_buffer("gate_weight", _col(norm.scale_weight))
        self.register_buffer("gate_bias", _col(norm.scale_bias))
        self.register_buffer("gamma", _col(gamma))
        self.register_buffer("beta", _col(beta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0 = self.conv(x)
        m = instance_mean(y0)
        k = self.k_scale * m + self.k_shift
        s = self.gamma * torch.sigmoid(self.gate_weight * k + self.gate_bias)
        t = s * (k - m) + self.beta
        if self.stats_recorder is not None:
            self.stats_recorder.add(k)
        return y0 * s + t


# Below this |gamma| the statistic is not recovered by dividing by gamma (zero-initialised or
# pruned channels); such a layer applies gamma and beta after the conv instead.
MIN_ABS_GAMMA = 1e-3


class FoldedConvBN(nn.Module, ReportsStats):
    """conv -> BatchNorm in eval mode, folded the ordinary way, with the statistic on the side."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        a, b = _fold_scale_shift(conv, norm)
        gamma = norm.weight.detach() if norm.affine else torch.ones_like(a)
        beta = norm.bias.detach() if norm.affine else torch.zeros_like(a)
        self.affine_after = bool((gamma.abs() < MIN_ABS_GAMMA).any())
        if self.affine_after:  # conv carries a, b; Y = gamma * Y0 + beta; k = K(Y0)
            self.conv = _conv_with(conv, conv.weight * a.view(-1, 1, 1, 1), b)
            self.register_buffer("gamma", _col(gamma))
            self.register_buffer("beta", _col(beta))
        else:  # conv carries everything; k = (K(Y) - beta) / gamma
            self.conv = _conv_with(conv, conv.weight * (a * gamma).view(-1, 1, 1, 1), gamma * b + beta)
            inv_gamma = 1.0 / gamma
            self.register_buffer("k_scale", _col(inv_gamma))
            self.register_buffer("k_shift", _col(-beta * inv_gamma))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.affine_after:
            if self.stats_recorder is not None:
                self.stats_recorder.add(instance_mean(y))
            return y * self.gamma + self.beta
        if self.stats_recorder is not None:
            self.stats_recorder.add(self.k_scale * instance_mean(y) + self.k_shift)
        return y


def _fold_pair(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> nn.Module:
    if isinstance(norm, RepresentativeBatchNorm2d):
        return FoldedConvRBN(conv, norm)
    return FoldedConvBN(conv, norm)


def _is_pair(conv: nn.Module, norm: nn.Module | None) -> bool:
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(norm, nn.BatchNorm2d)
        and norm.track_running_stats
        and conv.out_channels == norm.num_features
    )


def _candidate_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """(parent, conv name, norm name) where the structure suggests conv -> norm: consecutive
    children of an ``nn.Sequential``, and ``convN``/``bnN`` attributes of a block (the layout of
    rbn.library.resnet and torchvision's ResNets)."""
    pairs = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            names = [n for n, _ in module.named_children()]
            pairs += [(module, a, b) for a, b in zip(names, names[1:]) if _is_pair(getattr(module, a), getattr(module, b))]
        else:
            for name, conv in module.named_children():
                norm_name = "bn" + name[4:]
                if name.startswith("conv") and _is_pair(conv, getattr(module, norm_name, None)):
                    pairs.append((module, name, norm_name))
    return pairs


def _direct_pairs(model: nn.Module, pairs: list[tuple[nn.Module, str, str]], example: torch.Tensor) -> list[bool]:
    """For each pair: in a real forward pass, is the norm's input exactly the conv's output?"""
    outputs: dict[int, object] = {}
    verdicts = [True] * len(pairs)
    called = [False] * len(pairs)
    handles = []
    for i, (parent, conv_name, norm_name) in enumerate(pairs):

        def after_conv(_m, _inputs, out, i=i):
            outputs[i] = out

        def before_norm(_m, inputs, i=i):
            called[i] = True
            verdicts[i] = verdicts[i] and inputs[0] is outputs.get(i)

        handles.append(getattr(parent, conv_name).register_forward_hook(after_conv))
        handles.append(getattr(parent, norm_name).register_forward_pre_hook(before_norm))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    return [v and c for v, c in zip(verdicts, called)]


def fold_model(model: nn.Module, example: torch.Tensor | None = None) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each conv -> norm pair folded.

    Candidates come from the structure (see _candidate_pairs); with an ``example`` input each
    is confirmed by a forward pass in which the norm must receive exactly the conv's output
    (a pre-activation block's ``bn1 -> conv1`` is then left alone). The conv is replaced by the
    folded module and the norm by ``nn.Identity``; other norms keep their plain form. A conv
    whose output also feeds something else cannot be seen here: rbn.library.export compares the folded
    and unfolded outputs before it writes anything. Returns the copy and the number of pairs.
    """
    folded = copy.deepcopy(model).eval()
    pairs = _candidate_pairs(folded)
    if example is not None:
        pairs = [p for p, direct in zip(pairs, _direct_pairs(folded, pairs, example)) if direct]
    for parent, conv_name, norm_name in pairs:
        setattr(parent, conv_name, _fold_pair(getattr(parent, conv_name), getattr(parent, norm_name)))
        setattr(parent, norm_name, nn.Identity())
    return folded, len(pairs)
