"""A/B comparison: distances between two arms' probabilities and the per-image ``AbResult``
(the server-side corruption of /ab's input is ``service.core.corrupting``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.core.answers import AbResult, ArmsCorrect, ModelRef

if TYPE_CHECKING:
    from service.core.model import Description, Model

EPS = 1e-12


def l1_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, K), (N, K) -> (N,) sum of absolute differences (0..2)."""
    return np.abs(p - q).sum(axis=1)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N,) KL(p || q) in nats, probabilities clipped at 1e-12."""
    p = np.clip(p, EPS, 1.0)
    q = np.clip(q, EPS, 1.0)
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def compare(model: Model, baseline: Model, arms: tuple[Description, Description], label: int | None) -> list[AbResult]:
    """One ``AbResult`` per image from the two arms' ``Description``s (``model``'s first)."""
    a, b = arms
    l1, kl = l1_distance(a.probs, b.probs).tolist(), kl_divergence(a.probs, b.probs).tolist()
    ours, theirs = ModelRef(model.name, model.meta.version), ModelRef(baseline.name, baseline.meta.version)
    return [
        AbResult(ours, x, theirs, y, l1[i], kl[i],
                 None if label is None else ArmsCorrect(x.index == label, y.index == label))
        for i, (x, y) in enumerate(zip(a.predictions, b.predictions, strict=True))
    ]
