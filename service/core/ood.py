"""The OOD verdict of an answer: the bundle's calibrated score, its threshold and the per-layer `rbn_stats`.

Bundles made with the graph score (model.json ``ood.kind == "graph"``) carry the score as the
graph's `ood_score` output, so the service only reads it; older bundles are scored here from
`rbn_stats` with ``rbn.contract.ood.rms_score``. A bundle fitted on nothing (no ``ood`` in
model.json: a user's model before ``--calibration-data``) gets the logits' energy as an
uncalibrated score and no flag, with the reason in the answer; no threshold is ever made up.
"""

from __future__ import annotations

import numpy as np

from rbn.contract.bundle import BundleMeta, GraphOodCalibration, OodCalibration
from rbn.contract.ood import energy, rms_score
from service.core.answers import UNCALIBRATED_METHOD, OodVerdict

UNCALIBRATED_REASON = (
    "this model's bundle carries no OOD calibration (model.json has no 'ood': it was fitted on no "
    f"in-distribution images), so the score is the logits' {UNCALIBRATED_METHOD} (-logsumexp, larger is "
    "less familiar), uncalibrated, and nothing is flagged; fit one from a folder of the model's own "
    "images (--calibration-data DIR)"
)


class OodScorer:
    """Scores for one bundle: the graph's own, or its older rbn_stats calibration's."""

    def __init__(self, meta: BundleMeta) -> None:
        self.layers = list(meta.stats_layers)
        calibration = meta.ood
        self.calibrated = calibration is not None
        self.in_graph = isinstance(calibration, GraphOodCalibration)
        self.threshold = None if calibration is None else float(calibration.threshold)
        self.rms_calibration = calibration if isinstance(calibration, OodCalibration) else None
        self.reason = None if self.calibrated else UNCALIBRATED_REASON

    def scores(self, stats: np.ndarray, graph_score: np.ndarray | None = None) -> np.ndarray | None:
        """(N,) scores from the graph's `ood_score` (N, 1) or from `rbn_stats` (N, L); None when uncalibrated."""
        if not self.calibrated:
            return None
        if self.in_graph:
            return np.asarray(graph_score, np.float64).reshape(-1)
        return rms_score(stats, self.rms_calibration)

    def uncalibrated_scores(self, logits: np.ndarray) -> np.ndarray | None:
        """(N,) energies of an uncalibrated bundle's logits (N, K): its score, reported as uncalibrated;
        None for a calibrated bundle (its score is ``scores``)."""
        return None if self.calibrated else energy(np.asarray(logits, np.float64))

    def verdict(self, stats_row: np.ndarray, score: float | None, uncalibrated_score: float | None = None) -> OodVerdict:
        """One image's OOD verdict (its flag: ``service.core.answers.flagged``); an uncalibrated bundle's
        carries ``uncalibrated_score`` and the reason instead of a flag."""
        return OodVerdict(None if score is None else float(score), self.threshold,
                          dict(zip(self.layers, stats_row.tolist(), strict=True)),
                          None if uncalibrated_score is None else float(uncalibrated_score), self.reason)
