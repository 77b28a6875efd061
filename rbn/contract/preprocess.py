"""The models' input normalisation, defined once: uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std``.

Training and evaluation (``rbn.experiments.data.normalize``) and the service (``service.core.model.Model.preprocess``)
all call ``Normalizer``, so evaluation measures the tensors the service feeds the graph, bit for bit.
It lives in rbn/ rather than service/ because the dependencies run one way, rbn -> models -> service
(the service imports rbn's torch-free modules: the bundle schema, corruptions, OOD scores; rbn never
imports the service). numpy only.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class MeanStd(Protocol):
    """Per-channel statistics on [0, 1], as a bundle's input spec (``rbn.contract.bundle.InputSpec``) holds them."""

    mean: list[float]
    std: list[float]


class Normalizer:
    """uint8 (N, C, H, W) -> float32 ``(x / 255 - mean) / std`` per channel, as one multiply-add."""

    def __init__(self, spec: MeanStd) -> None:
        std = np.asarray(spec.std, np.float64).reshape(-1, 1, 1)
        mean = np.asarray(spec.mean, np.float64).reshape(-1, 1, 1)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.bias = (-mean / std).astype(np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = images.astype(np.float32)
        x *= self.scale
        x += self.bias
        return x
