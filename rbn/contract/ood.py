"""Out-of-distribution scores (numpy; the service and evaluation import this, torch never).

Every score is "larger = further from the training data". Two families of evidence:

- instance statistics: K(X_hat), the per-channel normalised instance means each norm layer
  computes anyway (the graph's `rbn_channel_stats`). Per layer a Gaussian fitted on clean
  training images (shrinkage covariance) gives a squared Mahalanobis distance; the distances
  are standardised on held-out clean images and averaged over layers ("maha").
  The older one-number-per-layer summary `rbn_stats` is scored by ``rms_score``.
- logits: max softmax probability, energy (-logsumexp), max logit.

A combination ("maha+energy") adds the standardised feature and energy evidence. Fitting lives
in rbn.experiments.ood_fit (scikit-learn, calibration time); rbn.library.ood_graph writes the same arithmetic into the
ONNX graph so the served `ood_score` equals ``Scorer.score`` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import get_args

import numpy as np

from rbn.contract.bundle import OodCalibration, OodMethod

# ---------------------------------------------------------------- the first score, from rbn_stats


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


def rms_score(stats: np.ndarray, calibration: OodCalibration) -> np.ndarray:
    """(N, L) `rbn_stats` -> (N,) the first OOD score (bundles made before the graph score)."""
    z = standardize(
        np.asarray(stats, dtype=np.float64),
        np.asarray(calibration.layer_mean),
        np.asarray(calibration.layer_std),
    )
    return combine(z, calibration.combine)


def calibrate_rms(clean_stats: np.ndarray, how: str = "rms_z", quantile: float = 0.95) -> OodCalibration:
    """Fit the per-layer standardisation of `rbn_stats` and the threshold on clean (in-distribution) stats."""
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


# ---------------------------------------------------------------- logit scores


def logsumexp(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def energy(logits: np.ndarray) -> np.ndarray:
    """Energy score -logsumexp(logits) (Liu et al. 2020): low evidence for every class -> high."""
    return -logsumexp(logits)


def msp(logits: np.ndarray) -> np.ndarray:
    """Negative max softmax probability (Hendrycks & Gimpel 2017)."""
    return -np.exp(np.asarray(logits, np.float64).max(axis=1) - logsumexp(logits))


def max_logit(logits: np.ndarray) -> np.ndarray:
    """Negative largest logit."""
    return -np.asarray(logits, np.float64).max(axis=1)


LOGIT_SCORES = {"msp": msp, "energy": energy, "max_logit": max_logit}

# ---------------------------------------------------------------- per-layer Gaussians on K(X_hat)


@dataclass(frozen=True)
class LayerGaussian:
    """One layer's Gaussian(s) in whitened coordinates: d(x) = min_k ||x @ whitener - centres[k]||^2.

    ``whitener`` W satisfies W W^T = inverse shrinkage covariance, so the squared Mahalanobis
    distance to a mean mu is ||(x - mu) W||^2; ``centres`` holds mu_k @ W for each mean (one for
    the class-agnostic fit, one per class for the class-conditional fit with shared covariance).
    """

    whitener: np.ndarray  # (C, C)
    centres: np.ndarray  # (K, C)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """(N, C) -> (N,) squared Mahalanobis distance to the nearest mean."""
        y = np.asarray(x, np.float64) @ self.whitener
        return ((y[:, None, :] - self.centres[None, :, :]) ** 2).sum(axis=2).min(axis=1)


def split_layers(channel_stats: np.ndarray, channels: Sequence[int]) -> list[np.ndarray]:
    """(N, sum C) -> one (N, C_l) array per layer."""
    if channel_stats.shape[1] != sum(channels):
        raise ValueError(f"channel stats have {channel_stats.shape[1]} columns, the layers {sum(channels)}")
    return np.split(np.asarray(channel_stats, np.float64), np.cumsum(channels)[:-1], axis=1)


def layer_distances(gaussians: Sequence[LayerGaussian], channel_stats: np.ndarray, channels: Sequence[int]) -> np.ndarray:
    """(N, sum C) -> (N, L) squared Mahalanobis distances, one column per layer."""
    parts = split_layers(channel_stats, channels)
    return np.stack([g.distances(p) for g, p in zip(gaussians, parts, strict=True)], axis=1)


# ---------------------------------------------------------------- the served score

METHODS: tuple[str, ...] = get_args(OodMethod)  # the scores a bundle's graph can compute


@dataclass(frozen=True)
class Scorer:
    """A calibrated score, each part standardised on held-out clean images:

        feature = mean_l (d_l - m_l) / s_l, divided by its own clean std s_f
        score   = feature_weight * feature + energy_weight * (e - m_e) / s_e

    Linear in the per-layer distances d_l and the energy e, so rbn.library.ood_graph can write it as a
    handful of ONNX nodes.
    """

    method: str
    gaussians: tuple[LayerGaussian, ...]
    channels: tuple[int, ...]
    layer_mean: np.ndarray  # (L,) of d_l on held-out clean images
    layer_std: np.ndarray  # (L,)
    feature_std: float  # std of the layer-averaged z on held-out clean images
    feature_weight: float  # 0 for "energy"
    energy_mean: float
    energy_std: float
    energy_weight: float  # 0 for "maha" / "maha_cc"

    def layer_coefficients(self) -> tuple[np.ndarray, float]:
        """The score's linear form in (d_1..d_L, e): coefficients for d and the constant term."""
        alpha = self.feature_weight / (len(self.layer_std) * self.layer_std * self.feature_std)
        constant = -float((alpha * self.layer_mean).sum())
        return alpha, constant

    def score(self, logits: np.ndarray, channel_stats: np.ndarray) -> np.ndarray:
        """(N, K) logits and (N, sum C) channel stats -> (N,) score."""
        out = np.zeros(len(logits))
        if self.feature_weight:
            z = (layer_distances(self.gaussians, channel_stats, self.channels) - self.layer_mean) / self.layer_std
            out += self.feature_weight * z.mean(axis=1) / self.feature_std
        if self.energy_weight:
            out += self.energy_weight * (energy(logits) - self.energy_mean) / self.energy_std
        return out


def threshold(clean_scores: np.ndarray, quantile: float = 0.95) -> float:
    """Flag a score above the clean images' ``quantile`` quantile (5% false positives on clean data)."""
    return float(np.quantile(np.asarray(clean_scores, np.float64), quantile))
