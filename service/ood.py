"""The OOD block of an answer: score and flag from ``rbn_stats`` with the bundle's calibration."""

from __future__ import annotations

import numpy as np

from rbn.bundle import BundleMeta
from rbn.ood import combine, standardize


class OodScorer:
    """Scores rows of ``rbn_stats`` exactly as ``rbn.ood.score`` does, with the arrays prepared once."""

    def __init__(self, meta: BundleMeta) -> None:
        self.layers = list(meta.stats_layers)
        calibration = meta.ood
        self.calibrated = calibration is not None
        if calibration is not None:
            self.layer_mean = np.asarray(calibration.layer_mean, np.float64)
            self.layer_std = np.asarray(calibration.layer_std, np.float64)
            self.combine = calibration.combine
            self.threshold = float(calibration.threshold)

    def scores(self, stats: np.ndarray) -> np.ndarray | None:
        """(N, L) -> (N,) scores, or None for an uncalibrated bundle."""
        if not self.calibrated:
            return None
        z = standardize(np.asarray(stats, np.float64), self.layer_mean, self.layer_std)
        return combine(z, self.combine)

    def block(self, stats_row: np.ndarray, score: float | None) -> dict:
        """The per-image ``ood`` object of an answer."""
        return {
            "score": None if score is None else float(score),
            "flag": None if score is None else bool(score > self.threshold),
            "threshold": self.threshold if self.calibrated else None,
            "stats": dict(zip(self.layers, stats_row.tolist(), strict=True)),
        }
