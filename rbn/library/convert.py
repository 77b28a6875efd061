"""Swap every BatchNorm2d in a trained network for an RBN that computes the same function."""

from __future__ import annotations

import torch
from torch import nn

from rbn.library.layer import RepresentativeBatchNorm2d, absorb_gate


def _first_tensor(module: nn.Module) -> torch.Tensor:
    """Any parameter or floating buffer: where and in what dtype the layer lives."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return tensors[0] if tensors else torch.empty(0)


def bn_to_rbn(bn: nn.BatchNorm2d) -> RepresentativeBatchNorm2d:
    """An RBN whose eval output equals ``bn``'s.

    With w_m = w_v = 0 the scaling calibration is the constant sigmoid(w_b), so gamma is
    divided by it; beta and the running statistics carry over unchanged.
    """
    rbn = RepresentativeBatchNorm2d(
        bn.num_features,
        eps=bn.eps,
        momentum=bn.momentum,
        affine=bn.affine,
        track_running_stats=bn.track_running_stats,
        device=_first_tensor(bn).device,
        dtype=_first_tensor(bn).dtype,
    )
    with torch.no_grad():
        if bn.track_running_stats:
            rbn.running_mean.copy_(bn.running_mean)
            rbn.running_var.copy_(bn.running_var)
            rbn.num_batches_tracked.copy_(bn.num_batches_tracked)
        if bn.affine:
            rbn.weight.copy_(absorb_gate(bn.weight, rbn.scale_bias))
            rbn.bias.copy_(bn.bias)
    rbn.train(bn.training)
    return rbn


def convert_bn_to_rbn(model: nn.Module) -> list[str]:
    """Replace, in place, every plain BatchNorm2d of ``model`` with an equivalent RBN.

    Returns the qualified names of the converted layers (already-RBN layers are left alone).
    Note: without affine there is no gamma to absorb sigmoid(w_b); such layers are converted
    but their output is scaled by sigmoid(1) until fine-tuned.
    """
    converted: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(parent, child_name, bn_to_rbn(child))
                converted.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    return converted
