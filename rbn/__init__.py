"""Representative Batch Normalization: the layer, conversion, architectures and ONNX export.

Attributes are imported lazily so that the torch-free parts (rbn.contract.bundle, rbn.contract.ood,
rbn.contract.corruptions, rbn.experiments.data) stay usable, and cheap, without torch installed.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "RepresentativeBatchNorm2d": "rbn.library.layer",
    "convert_bn_to_rbn": "rbn.library.convert",
    "bn_to_rbn": "rbn.library.convert",
    "get_norm_layer": "rbn.library.norms",
    "NORM_LAYERS": "rbn.library.norms",
    "cifar_resnet": "rbn.library.resnet",
    "resnet20": "rbn.library.resnet",
    "resnet50": "rbn.library.resnet",
    "export_onnx": "rbn.library.export",
    "fold_model": "rbn.library.fold",
    "record_stats": "rbn.library.stats",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rbn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
