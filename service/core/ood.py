"""The OOD verdict of an answer: the bundle's calibrated score, its threshold and the per-layer `rbn_stats`.

Bundles made with the graph score (model.json ``ood.kind == "graph"``) carry the score as the
graph's `ood_score` output, so the service only reads it; older bundles are scored here from
`rbn_stats` with ``rbn.contract.ood.rms_score``.
"""

from __future__ import annotations

import numpy as np

from rbn.contract.bundle import BundleMeta, GraphOodCalibration, OodCalibration
from rbn.contract.ood import rms_score
from service.core.answers import OodVerdict


class OodScorer:
    """Scores for one bundle: the graph's own, or its older rbn_stats calibration's."""

    def __init__(self, meta: BundleMeta) -> None:
        self.layers = list(meta.stats_layers)
        calibration = meta.ood
        self.calibrated = calibration is not None
        self.in_graph = isinstance(calibration, GraphOodCalibration)
        self.threshold = None if calibration is None else float(calibration.threshold)
        self.rms_calibration = calibration if isinstance(calibration, OodCalibration) else None

    def scores(self, stats: np.ndarray, graph_score: np.ndarray | None = None) -> np.ndarray | None:
        """(N,) scores from the graph's `ood_score` (N, 1) or from `rbn_stats` (N, L); None when uncalibrated."""
        if not self.calibrated:
            return None
        if self.in_graph:
            return np.asarray(graph_score, np.float64).reshape(-1)
        return rms_score(stats, self.rms_calibration)

    def verdict(self, stats_row: np.ndarray, score: float | None) -> OodVerdict:
        """One image's OOD verdict (its flag: ``service.core.answers.flagged``)."""
        return OodVerdict(None if score is None else float(score), self.threshold,
                          dict(zip(self.layers, stats_row.tolist(), strict=True)))
