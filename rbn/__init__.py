"""Representative Batch Normalization: the layer, conversion, architectures and ONNX export.

Attributes are imported lazily so that the torch-free parts (rbn.bundle, rbn.ood,
rbn.corruptions, rbn.data) stay usable, and cheap, without torch installed.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RepresentativeBatchNorm2d": "rbn.layer",
    "convert_bn_to_rbn": "rbn.convert",
    "bn_to_rbn": "rbn.convert",
    "get_norm_layer": "rbn.norms",
    "NORM_LAYERS": "rbn.norms",
    "cifar_resnet": "rbn.resnet",
    "resnet20": "rbn.resnet",
    "resnet50": "rbn.resnet",
    "export_onnx": "rbn.export",
    "fold_model": "rbn.fold",
    "record_stats": "rbn.stats",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rbn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
