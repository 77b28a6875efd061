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


def _owners(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    """id(module) -> (parent, attribute name), for modules that appear exactly once in the tree."""
    owners: dict[int, tuple[nn.Module, str]] = {}
    seen_twice: set[int] = set()
    for parent in model.modules():
        for name, child in parent.named_children():
            if id(child) in owners:
                seen_twice.add(id(child))
            owners[id(child)] = (parent, name)
    return {k: v for k, v in owners.items() if k not in seen_twice}


def traced_pairs(model: nn.Module, example: torch.Tensor) -> list[tuple[nn.Module, str, nn.Module, str]]:
    """(conv parent, conv name, norm parent, norm name) for every norm whose input, in a real forward
    pass, is exactly a conv's output: any layout (EfficientNet's ``_bn1`` after ``_depthwise_conv``, a
    squeeze-excitation block's norm on a 1x1 map), whatever the attribute names. A norm called more
    than once, or on different convs' outputs, is left out."""
    owners = _owners(model)
    produced: dict[int, tuple[nn.Module, torch.Tensor]] = {}  # the tensor is kept so that its id is not reused
    inputs: dict[int, list[nn.Module | None]] = {}
    handles = []

    def after_conv(conv, _inputs, out):
        produced[id(out)] = (conv, out)

    def before_norm(norm, args):
        conv, out = produced.get(id(args[0]), (None, None))
        inputs.setdefault(id(norm), []).append(conv if out is args[0] else None)

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(after_conv))
    handles += [n.register_forward_pre_hook(before_norm) for n in norms]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    pairs = []
    for norm in norms:
        seen = inputs.get(id(norm), [])
        if len(seen) != 1 or seen[0] is None or not _is_pair(seen[0], norm):
            continue
        conv = seen[0]
        if id(conv) in owners and id(norm) in owners:
            pairs.append((*owners[id(conv)], *owners[id(norm)]))
    return pairs


def unfolded_norms(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """norm layer name -> why ``fold_model`` leaves it as a separate op (one line each)."""
    folded = {id(getattr(np_, nn_)) for _cp, _cn, np_, nn_ in traced_pairs(model, example)}
    reasons = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d) and id(m) not in folded:
            why = "no running statistics" if not m.track_running_stats else "its input is not a conv's output (nothing to fold into)"
            reasons[name] = why
    return reasons


def _logits(model: nn.Module, example: torch.Tensor) -> torch.Tensor | None:
    with torch.no_grad():
        out = model(example)
    return out if isinstance(out, torch.Tensor) else None


def _same(want: torch.Tensor, got: torch.Tensor) -> bool:
    return want.shape == got.shape and (want - got).abs().max().item() <= 1e-3 * (1 + want.abs().max().item())


def fold_model(model: nn.Module, example: torch.Tensor | None = None) -> tuple[nn.Module, int]:
    """An eval-mode copy of ``model`` with each conv -> norm pair folded.

    With an ``example`` input the pairs come from a forward pass (``traced_pairs``: the norm must
    receive exactly the conv's output, so a pre-activation block's ``bn1 -> conv1`` or a norm after
    an add stays as it is), and the folded copy must give the model's logits on it; if it does not
    (a conv output that also feeds a skip path), each pair is tried alone and only those that keep
    the logits are folded. Without an example, pairs come from the structure (``_candidate_pairs``).
    The conv is replaced by the folded module and the norm by ``nn.Identity``; other norms keep
    their plain form (an RBN stays an unfolded RBN in the graph: ``unfolded_norms`` says which and
    why). rbn.library.export compares the folded and unfolded outputs again before it writes
    anything. Returns the copy and the number of pairs.
    """
    folded = copy.deepcopy(model).eval()
    if example is None:
        pairs = [(p, c, p, n) for p, c, n in _candidate_pairs(folded)]
        want = None
    else:
        pairs = traced_pairs(folded, example)
        want = _logits(folded, example)

    def apply(pair) -> tuple:
        conv_parent, conv_name, norm_parent, norm_name = pair
        undo = (getattr(conv_parent, conv_name), getattr(norm_parent, norm_name))
        setattr(conv_parent, conv_name, _fold_pair(undo[0], undo[1]))
        setattr(norm_parent, norm_name, nn.Identity())
        return undo

    def revert(pair, undo) -> None:
        setattr(pair[0], pair[1], undo[0])
        setattr(pair[2], pair[3], undo[1])

    undos = [apply(pair) for pair in pairs]
    if want is None or _same(want, _logits(folded, example)):
        return folded, len(pairs)
    for pair, undo in zip(pairs, undos):
        revert(pair, undo)
    kept = 0
    for pair in pairs:
        undo = apply(pair)
        if _same(want, _logits(folded, example)):
            kept += 1
        else:  # the conv's output feeds something besides this norm
            revert(pair, undo)
    return folded, kept
