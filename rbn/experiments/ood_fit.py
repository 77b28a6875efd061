"""Fitting the OOD scores of rbn.contract.ood on clean images (calibration time: scikit-learn; the service never fits)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.covariance import LedoitWolf

from rbn.contract.ood import METHODS, LayerGaussian, Scorer, energy, layer_distances, split_layers


def fit_layer(x: np.ndarray, labels: np.ndarray | None = None) -> LayerGaussian:
    """Ledoit-Wolf shrinkage covariance of one layer's K(X_hat) (class-centred when labels are given)."""
    x = np.asarray(x, np.float64)
    if labels is None:
        means = x.mean(axis=0, keepdims=True)
        centred = x - means
    else:
        classes = np.unique(labels)
        means = np.stack([x[labels == c].mean(axis=0) for c in classes])
        centred = x - means[np.searchsorted(classes, labels)]
    covariance = LedoitWolf(assume_centered=True).fit(centred).covariance_
    # W = U diag(1/sqrt(eigenvalue)): W W^T is the inverse covariance; eigh is stable for SPD input.
    eigenvalues, vectors = np.linalg.eigh(covariance)
    whitener = vectors / np.sqrt(np.maximum(eigenvalues, 1e-12))
    return LayerGaussian(whitener, means @ whitener)



def fit_scorer(method: str, fit_channel_stats: np.ndarray, fit_labels: np.ndarray, channels: Sequence[int],
               held_logits: np.ndarray, held_channel_stats: np.ndarray) -> Scorer:
    """Gaussians on one clean set (``fit_*``), standardisation on another (``held_*``)."""
    if method not in METHODS:
        raise ValueError(f"unknown OOD method {method!r}; valid: {', '.join(METHODS)}")
    channels = tuple(int(c) for c in channels)
    uses_features = method != "energy"
    class_conditional = "maha_cc" in method
    gaussians: tuple[LayerGaussian, ...] = ()
    layer_mean = np.zeros(len(channels))
    layer_std = np.ones(len(channels))
    feature_std = 1.0
    if uses_features:
        labels = fit_labels if class_conditional else None
        gaussians = tuple(
            fit_layer(part, labels) for part in split_layers(fit_channel_stats, channels)
        )
        held = layer_distances(gaussians, held_channel_stats, channels)
        layer_mean, layer_std = held.mean(axis=0), np.maximum(held.std(axis=0), 1e-9)
        feature_std = float(max(((held - layer_mean) / layer_std).mean(axis=1).std(), 1e-9))
    e = energy(held_logits)
    return Scorer(
        method=method,
        gaussians=gaussians,
        channels=channels,
        layer_mean=layer_mean,
        layer_std=layer_std,
        feature_std=feature_std,
        feature_weight=1.0 if uses_features else 0.0,
        energy_mean=float(e.mean()),
        energy_std=float(max(e.std(), 1e-9)),
        energy_weight=1.0 if "energy" in method else 0.0,
    )
