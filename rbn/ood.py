"""Out-of-distribution score from `rbn_stats` (torch-free; the service imports it).

Each layer's statistic is standardised with its mean and std over clean training data, the
standardised values are combined across layers into one score, and a sample is flagged when
its score exceeds the clean data's 95th percentile.
"""

from __future__ import annotations

import numpy as np

from rbn.bundle import OodCalibration


def standardize(stats: np.ndarray, layer_mean: np.ndarray, layer_std: np.ndarray) -> np.ndarray:
    """(N, L) statistics -> (N, L) z-values."""
    return (stats - layer_mean) / layer_std


def combine(z: np.ndarray, how: str) -> np.ndarray:
    """(N, L) -> (N,). mean_z: the average shift; max_z: the most shifted layer; rms_z: both ways."""
    if how == "mean_z":
        return z.mean(axis=1)
    if how == "max_z":
        return z.max(axis=1)
    if how == "rms_z":
        return np.sqrt((z**2).mean(axis=1))
    raise ValueError(f"unknown combination {how!r}; valid: mean_z, max_z, rms_z")


def score(stats: np.ndarray, calibration: OodCalibration) -> np.ndarray:
    """(N, L) `rbn_stats` -> (N,) OOD score; larger means further from the training data."""
    z = standardize(
        np.asarray(stats, dtype=np.float64),
        np.asarray(calibration.layer_mean),
        np.asarray(calibration.layer_std),
    )
    return combine(z, calibration.combine)


def calibrate(clean_stats: np.ndarray, how: str = "rms_z", quantile: float = 0.95) -> OodCalibration:
    """Fit the per-layer standardisation and the threshold on clean (in-distribution) stats."""
    clean_stats = np.asarray(clean_stats, dtype=np.float64)
    mean = clean_stats.mean(axis=0)
    std = np.maximum(clean_stats.std(axis=0), 1e-6)
    clean_scores = combine(standardize(clean_stats, mean, std), how)
    return OodCalibration(
        layer_mean=mean.tolist(),
        layer_std=std.tolist(),
        combine=how,
        threshold=float(np.quantile(clean_scores, quantile)),
        clean_quantile=quantile,
        calibration_samples=len(clean_stats),
    )
