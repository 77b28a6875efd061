"""Instance statistics: K(X_hat), the instance's normalised channel means, per norm layer.

K(X_hat) is what RBN's scaling calibration reads: how many running standard deviations this
instance's channel means sit from the training statistics. For plain BN the same quantity is
defined with w_m = 0. Two graph outputs carry it:

- `rbn_stats` (N, L): per layer, the RMS over channels (the original one-number summary);
- `rbn_channel_stats` (N, sum of C): every layer's channels, concatenated in forward order --
  the per-channel pattern the OOD score reads (rbn.contract.ood).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from rbn.library.layer import ReportsStats, instance_mean


class StatsRecorder:
    """Collects one (N,) statistic per norm layer per forward pass, in forward order.

    Per layer it keeps K(X_hat) itself and its L2 norm over channels (one ReduceL2 node in
    ONNX), and divides the norms by sqrt(C) once for all layers at the end, which keeps the
    exported graph small.
    """

    def __init__(self) -> None:
        self.norms: list[torch.Tensor] = []
        self.k_hats: list[torch.Tensor] = []
        self.channels: list[int] = []

    def add(self, k_hat: torch.Tensor) -> None:
        self.norms.append(torch.linalg.vector_norm(k_hat, dim=1))  # (N, 1, 1)
        self.k_hats.append(k_hat.flatten(1))  # (N, C)
        self.channels.append(k_hat.shape[1])

    def stacked(self) -> torch.Tensor:
        """Shape (N, L): RMS over channels of K(X_hat) per layer."""
        first = self.norms[0]
        inv_sqrt_c = torch.tensor([c**-0.5 for c in self.channels], dtype=first.dtype, device=first.device)
        return torch.cat(self.norms, dim=1).flatten(1) * inv_sqrt_c

    def channel_stats(self) -> torch.Tensor:
        """Shape (N, sum of C): K(X_hat) of every layer, concatenated in forward order."""
        return torch.cat(self.k_hats, dim=1)


def _bn_hook(recorder: StatsRecorder):
    def hook(module: nn.BatchNorm2d, inputs, _output) -> None:
        if module.running_var is None:
            raise ValueError("rbn_stats needs running statistics (track_running_stats=True)")
        (x,) = inputs
        a = torch.rsqrt(module.running_var + module.eps).view(1, -1, 1, 1)
        recorder.add((instance_mean(x) - module.running_mean.view(1, -1, 1, 1)) * a)

    return hook


def _reports_itself(module: nn.Module) -> bool:
    # RBN and the folded modules of rbn.library.fold compute k themselves and report it if asked.
    return isinstance(module, ReportsStats)


def stats_sources(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules that yield a statistic: norm layers and folded conv-norm pairs."""
    return [(n, m) for n, m in model.named_modules() if _reports_itself(m) or isinstance(m, nn.BatchNorm2d)]


@contextlib.contextmanager
def record_stats(model: nn.Module) -> Iterator[StatsRecorder]:
    """Attach a recorder to every statistic source of an eval-mode model for the duration."""
    recorder = StatsRecorder()
    handles = []
    sources = [m for _, m in stats_sources(model)]
    try:
        for module in sources:
            if _reports_itself(module):
                module.stats_recorder = recorder
            else:
                handles.append(module.register_forward_hook(_bn_hook(recorder)))
        yield recorder
    finally:
        for module in sources:
            if _reports_itself(module):
                module.stats_recorder = None
        for h in handles:
            h.remove()


def stats_layer_names(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of the statistic sources in the order a forward pass reports them."""
    order: list[str] = []
    handles = [m.register_forward_pre_hook(lambda _m, _i, n=n: order.append(n)) for n, m in stats_sources(model)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in handles:
            h.remove()
    return order
