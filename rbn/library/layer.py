"""Representative Batch Normalization (Gao et al., CVPR 2021).

For an input X of shape (N, C, H, W) and K(T) the spatial mean of one instance's channel:

1. centering calibration   X' = X + w_m * K(X)
2. batch normalization (no affine) on X'  ->  X_hat
3. scaling calibration     Y  = gamma * X_hat * sigmoid(w_v * K(X_hat) + w_b) + beta

Unlike the official code, the centering step is out of place: the official ``input += ...``
silently rewrites any tensor the caller still holds (a residual shortcut, for one).

RBN subclasses BatchNorm2d, so ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` would silently
replace every RBN layer with a plain SyncBatchNorm (its calibration weights dropped). Use
``convert_sync_batchnorm`` here instead: it converts plain BatchNorm layers and refuses RBN ones.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Parameter names match the official implementation so its checkpoints load unchanged.
CALIBRATION_PARAMS = ("weight", "bias", "center_weight", "scale_weight", "scale_bias")


def instance_mean(x: torch.Tensor) -> torch.Tensor:
    """K(x): per-sample, per-channel mean over the spatial axes, shape (N, C, 1, 1)."""
    return x.mean(dim=(2, 3), keepdim=True)


def _per_channel(p: torch.Tensor) -> torch.Tensor:
    return p.view(1, -1, 1, 1)


def absorb_gate(gamma: torch.Tensor, scale_bias: torch.Tensor) -> torch.Tensor:
    """A BatchNorm's gamma -> the RBN gamma that computes the same function: with w_m = w_v = 0 the
    scaling calibration is the constant sigmoid(w_b), divided out of gamma. The one rule for both
    ways in: loading a BN checkpoint into RBN layers, and ``rbn.library.convert.bn_to_rbn``."""
    return gamma / torch.sigmoid(scale_bias)


class ReportsStats:
    """A module that computes K(X_hat) itself and hands it to its ``stats_recorder`` while one is
    attached (``rbn.library.stats.record_stats`` attaches one; other modules get a forward hook)."""

    stats_recorder = None  # an rbn.library.stats.StatsRecorder while statistics are being collected


class RepresentativeBatchNorm2d(nn.BatchNorm2d, ReportsStats):
    """Drop-in replacement for :class:`torch.nn.BatchNorm2d` with RBN's two calibrations.

    Takes BatchNorm2d's constructor arguments. Parameters (all shape ``(C,)``):
    ``weight`` (gamma) = 1, ``bias`` (beta) = 0, ``center_weight`` (w_m) = 0,
    ``scale_weight`` (w_v) = 0, ``scale_bias`` (w_b) = 1.  ``affine=False`` drops gamma and
    beta only; the calibration weights always exist, as in the paper.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        factory = {"device": device, "dtype": dtype}
        self.center_weight = nn.Parameter(torch.empty(num_features, **factory))
        self.scale_weight = nn.Parameter(torch.empty(num_features, **factory))
        self.scale_bias = nn.Parameter(torch.empty(num_features, **factory))
        self.reset_calibration()

    def reset_calibration(self) -> None:
        """The paper's initialisation: calibrations start as identity-up-to-sigmoid(1)."""
        with torch.no_grad():
            self.center_weight.zero_()
            self.scale_weight.zero_()
            self.scale_bias.fill_(1.0)
            if self.affine:
                self.weight.fill_(1.0)
                self.bias.zero_()

    def _batch_norm_factor(self) -> float:
        # Same bookkeeping as torch's _BatchNorm.forward (momentum=None -> cumulative average).
        if not (self.training and self.track_running_stats):
            return 0.0 if self.momentum is None else self.momentum
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        centered = x + _per_channel(self.center_weight) * instance_mean(x)
        use_batch_stats = self.training or self.running_mean is None
        x_hat = F.batch_norm(
            centered,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            None,
            None,
            use_batch_stats,
            self._batch_norm_factor(),
            self.eps,
        )
        k_hat = instance_mean(x_hat)
        gate = torch.sigmoid(_per_channel(self.scale_weight) * k_hat + _per_channel(self.scale_bias))
        if self.stats_recorder is not None:
            self.stats_recorder.add(k_hat)
        if self.affine:
            return _per_channel(self.weight) * x_hat * gate + _per_channel(self.bias)
        return x_hat * gate

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Official checkpoints store gamma, beta and the calibration weights as (1, C, 1, 1).
        for name in CALIBRATION_PARAMS:
            key = prefix + name
            if key in state_dict and state_dict[key].dim() == 4:
                state_dict[key] = state_dict[key].reshape(-1)
        # A plain BatchNorm2d checkpoint has no calibration weights: start them at the paper's
        # init and absorb the constant gate sigmoid(w_b) into gamma, so the layer computes what
        # the BN layer computed (absorb_gate, as convert_bn_to_rbn). Without affine there is
        # no gamma to absorb it: such a layer's output is scaled by sigmoid(1) until fine-tuned.
        if prefix + "running_mean" in state_dict and prefix + "center_weight" not in state_dict:
            state_dict[prefix + "center_weight"] = torch.zeros(self.num_features)
            state_dict[prefix + "scale_weight"] = torch.zeros(self.num_features)
            state_dict[prefix + "scale_bias"] = torch.ones(self.num_features)
            if self.affine and prefix + "weight" in state_dict:
                state_dict[prefix + "weight"] = absorb_gate(state_dict[prefix + "weight"], state_dict[prefix + "scale_bias"])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", calibration=centering+scaling"



def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``torch.nn.SyncBatchNorm.convert_sync_batchnorm``, refusing models that hold RBN layers.

    Torch's converter matches any BatchNorm subclass and would turn each RBN into a plain
    SyncBatchNorm, losing the centering and scaling calibrations without a word; RBN has no
    synchronised variant, so the conversion is refused (TypeError naming the layers)."""
    rbn = [name or "(the module itself)" for name, m in module.named_modules() if isinstance(m, RepresentativeBatchNorm2d)]
    if rbn:
        listed = ", ".join(rbn[:5]) + (f" and {len(rbn) - 5} more" if len(rbn) > 5 else "")
        raise TypeError(f"cannot convert RepresentativeBatchNorm2d layers to SyncBatchNorm ({listed}): "
                        "SyncBatchNorm would drop their calibrations; train RBN models without SyncBatchNorm")
    return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
