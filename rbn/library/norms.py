"""Name -> norm layer registry. Every entry takes BatchNorm2d's channels-first signature."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from rbn.library.layer import RepresentativeBatchNorm2d

NormFactory = Callable[[int], nn.Module]

NORM_LAYERS: dict[str, type[nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "rbn": RepresentativeBatchNorm2d,
}


def get_norm_layer(name: str) -> type[nn.Module]:
    """Look a norm layer up by name; an unknown name raises ValueError listing valid ones."""
    try:
        return NORM_LAYERS[name.lower()]
    except KeyError:
        valid = ", ".join(sorted(NORM_LAYERS))
        raise ValueError(f"unknown norm layer {name!r}; valid names: {valid}") from None
