"""Folding against numbers worked out on paper (rbn/library/fold.py, DESIGN.md "RBN, exactly"): a 1x1 conv
with a bias into an RBN and into a BatchNorm, two channels with different parameters each, on a 2x2 input;
the eager module and its folded copy must both give the hand-computed output and statistic K(X_hat).

Channel 0: conv 2x + 1, running mean 4, var 3, eps 1 (a = 1/2), w_m 0.5, w_v 0.4, w_b -1, gamma 2, beta 0.25.
  x = [[1, 2], [3, 4]] -> X = [[3, 5], [7, 9]], K(X) = 6; X' = X + 0.5 * 6 = [[6, 8], [10, 12]];
  X_hat = (X' - 4) / 2 = [[1, 2], [3, 4]], K(X_hat) = 2.5; z = sigmoid(0.4 * 2.5 - 1) = 1/2;
  Y = 2 * X_hat * 1/2 + 0.25 = [[1.25, 2.25], [3.25, 4.25]].
Channel 1: conv -x, running mean -2, var 0 (a = 1), w_m 0, w_v 0, w_b 0, gamma 4, beta -1.
  X = [[-1, -2], [-3, -4]]; X_hat = X + 2 = [[1, 0], [-1, -2]], K(X_hat) = -0.5; z = 1/2;
  Y = 4 * X_hat * 1/2 - 1 = [[1, -1], [-3, -5]].
BatchNorm with the same conv, statistics and affine: Y = gamma * (X - mean) * a + beta:
  channel 0: [[-0.75, 1.25], [3.25, 5.25]], K(X_hat) = (6 - 4) / 2 = 1; channel 1: [[3, -1], [-5, -9]], -0.5.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rbn.library.fold import MIN_ABS_GAMMA, FoldedConvBN, FoldedConvRBN, fold_model
from rbn.library.layer import RepresentativeBatchNorm2d

X = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
RBN_Y = torch.tensor([[[1.25, 2.25], [3.25, 4.25]], [[1.0, -1.0], [-3.0, -5.0]]]).unsqueeze(0)
RBN_K = torch.tensor([[2.5, -0.5]])
BN_Y = torch.tensor([[[-0.75, 1.25], [3.25, 5.25]], [[3.0, -1.0], [-5.0, -9.0]]]).unsqueeze(0)
BN_K = torch.tensor([[1.0, -0.5]])


class Recorder:
    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def add(self, k: torch.Tensor) -> None:
        self.seen.append(k.detach().reshape(k.shape[0], -1).clone())


def conv() -> nn.Conv2d:
    c = nn.Conv2d(1, 2, 1, bias=True)
    with torch.no_grad():
        c.weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        c.bias.copy_(torch.tensor([1.0, 0.0]))
    return c


def norm(kind: str, gamma=(2.0, 4.0)) -> nn.BatchNorm2d:
    n = RepresentativeBatchNorm2d(2, eps=1.0) if kind == "rbn" else nn.BatchNorm2d(2, eps=1.0)
    with torch.no_grad():
        n.running_mean.copy_(torch.tensor([4.0, -2.0]))
        n.running_var.copy_(torch.tensor([3.0, 0.0]))
        n.weight.copy_(torch.tensor(gamma))
        n.bias.copy_(torch.tensor([0.25, -1.0]))
        if kind == "rbn":
            n.center_weight.copy_(torch.tensor([0.5, 0.0]))
            n.scale_weight.copy_(torch.tensor([0.4, 0.0]))
            n.scale_bias.copy_(torch.tensor([-1.0, 0.0]))
    return n


def run(module: nn.Module, recorders: list[nn.Module]) -> tuple[torch.Tensor, torch.Tensor]:
    rec = Recorder()
    for m in recorders:
        m.stats_recorder = rec
    try:
        with torch.no_grad():
            y = module(X)
    finally:
        for m in recorders:
            m.stats_recorder = None
    return y, rec.seen[0]


@pytest.mark.parametrize(("kind", "want_y", "want_k", "folded_type"), [
    ("rbn", RBN_Y, RBN_K, FoldedConvRBN),
    ("bn", BN_Y, BN_K, FoldedConvBN),
])
def test_eager_and_folded_give_the_hand_computed_output_and_statistic(kind, want_y, want_k, folded_type):
    model = nn.Sequential(conv(), norm(kind)).eval()
    if kind == "rbn":
        y, k = run(model, [model[1]])
        torch.testing.assert_close(y, want_y, rtol=0, atol=1e-6)
        torch.testing.assert_close(k, want_k, rtol=0, atol=1e-6)
    folded, pairs = fold_model(model)
    assert pairs == 1 and isinstance(folded[0], folded_type) and isinstance(folded[1], nn.Identity)
    y, k = run(folded, [folded[0]])
    torch.testing.assert_close(y, want_y, rtol=0, atol=1e-5)
    torch.testing.assert_close(k, want_k, rtol=0, atol=1e-5)
    assert isinstance(model[1], type(norm(kind)))  # the caller's model is left as it was


def test_a_zero_gamma_channel_applies_the_affine_after_the_conv_and_keeps_its_statistic():
    model = nn.Sequential(conv(), norm("bn", gamma=(2.0, 0.0))).eval()
    folded, _ = fold_model(model)
    assert folded[0].affine_after
    y, k = run(folded, [folded[0]])
    want = BN_Y.clone()
    want[0, 1] = -1.0  # gamma 0: beta everywhere
    torch.testing.assert_close(y, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(k, BN_K, rtol=0, atol=1e-5)  # K(X_hat), not divided by a zero gamma


@pytest.mark.parametrize(("gamma", "after"), [(MIN_ABS_GAMMA, False), (-MIN_ABS_GAMMA, False),
                                              (MIN_ABS_GAMMA * 0.99, True), (-MIN_ABS_GAMMA * 0.99, True)])
def test_the_small_gamma_rule_is_strict(gamma, after):
    assert FoldedConvBN(conv(), norm("bn", gamma=(2.0, gamma)).eval()).affine_after is after


def test_folding_needs_running_statistics_and_matching_channels():
    no_stats = nn.Sequential(conv(), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    assert fold_model(no_stats)[1] == 0
    other = nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(2)).eval()
    assert fold_model(other)[1] == 0


class Block(nn.Module):
    """torchvision's layout: convN/bnN attributes, no Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = conv(), norm("rbn")
        self.conv2, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))))


def test_structure_finds_every_convN_bnN_pair_and_every_sequential_pair():
    folded, pairs = fold_model(Block().eval())
    assert pairs == 2 and isinstance(folded.conv1, FoldedConvRBN) and isinstance(folded.conv2, FoldedConvBN)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.bn2, nn.Identity)
    two = nn.Sequential(nn.Sequential(conv(), norm("rbn")), nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2))).eval()
    folded, pairs = fold_model(two)
    assert pairs == 2 and isinstance(folded[0][0], FoldedConvRBN) and isinstance(folded[1][0], FoldedConvBN)
    y, _ = run(folded, [folded[0][0]])
    with torch.no_grad():
        torch.testing.assert_close(y, two(X), rtol=0, atol=1e-5)


class Odd(nn.Module):
    """A norm on the input (no conv before it), a norm never called, and a conv registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.BatchNorm2d(1)
        self.unused = nn.BatchNorm2d(2)
        self.conv = conv()
        self.alias = self.conv
        self.bn = norm("bn")

    def forward(self, x):
        return self.bn(self.alias(self.first(x)))


def test_traced_pairs_skip_what_cannot_be_folded_and_leave_no_hooks():
    model = Odd().eval()
    folded, pairs = fold_model(model, X)
    assert pairs == 0  # the conv has two names: which one to replace is ambiguous
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in folded.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    stats_free = nn.Sequential(conv(), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    assert fold_model(stats_free, X)[1] == 0


def test_unfolded_norms_says_which_and_why():
    from rbn.library.fold import unfolded_norms

    model = nn.Sequential(nn.BatchNorm2d(1), conv(), norm("rbn"), nn.BatchNorm2d(2, track_running_stats=False)).eval()
    assert unfolded_norms(model, X) == {"0": "its input is not a conv's output (nothing to fold into)",
                                       "3": "no running statistics"}
