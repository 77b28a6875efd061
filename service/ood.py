"""The OOD block of an answer: the bundle's calibrated score, its flag and the per-layer `rbn_stats`.

Bundles made with the graph score (model.json ``ood.kind == "graph"``) carry the score as the
graph's `ood_score` output, so the service only reads it; older bundles are scored here from
`rbn_stats` exactly as ``rbn.ood.rms_score`` does.
"""

from __future__ import annotations

import numpy as np

from rbn.bundle import BundleMeta, GraphOodCalibration, OodCalibration
from rbn.ood import combine, standardize


class OodScorer:
    """Scores for one bundle, with its calibration's arrays prepared once."""

    def __init__(self, meta: BundleMeta) -> None:
        self.layers = list(meta.stats_layers)
        calibration = meta.ood
        self.calibrated = calibration is not None
        self.in_graph = isinstance(calibration, GraphOodCalibration)
        self.threshold = None if calibration is None else float(calibration.threshold)
        if isinstance(calibration, OodCalibration):
            self.layer_mean = np.asarray(calibration.layer_mean, np.float64)
            self.layer_std = np.asarray(calibration.layer_std, np.float64)
            self.combine = calibration.combine

    def scores(self, stats: np.ndarray, graph_score: np.ndarray | None = None) -> np.ndarray | None:
        """(N,) scores from the graph's `ood_score` (N, 1) or from `rbn_stats` (N, L); None when uncalibrated."""
        if not self.calibrated:
            return None
        if self.in_graph:
            return np.asarray(graph_score, np.float64).reshape(-1)
        z = standardize(np.asarray(stats, np.float64), self.layer_mean, self.layer_std)
        return combine(z, self.combine)

    def block(self, stats_row: np.ndarray, score: float | None) -> dict:
        """The per-image ``ood`` object of an answer."""
        return {
            "score": None if score is None else float(score),
            "flag": None if score is None else bool(score > self.threshold),
            "threshold": self.threshold,
            "stats": dict(zip(self.layers, stats_row.tolist(), strict=True)),
        }
