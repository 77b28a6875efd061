"""A/B comparison: distances between two arms' probabilities, correctness, and server-side corruption."""

from __future__ import annotations

import numpy as np

from rbn.corruptions import corrupt

EPS = 1e-12


def l1_distance(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N, K), (N, K) -> (N,) sum of absolute differences (0..2)."""
    return np.abs(p - q).sum(axis=1)


def kl_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """(N,) KL(p || q) in nats, probabilities clipped at 1e-12."""
    p = np.clip(p, EPS, 1.0)
    q = np.clip(q, EPS, 1.0)
    return (p * (np.log(p) - np.log(q))).sum(axis=1)


def verdict(rbn_right: bool, baseline_right: bool) -> str:
    """Which arm was right: rbn, baseline, both or neither."""
    if rbn_right and baseline_right:
        return "both"
    if rbn_right:
        return "rbn"
    return "baseline" if baseline_right else "neither"


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt uint8 (N, C, H, W) images; every channel of an image gets the same random draws."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        for c, channel in enumerate(image):
            out[i, c] = corrupt(channel, name, severity, seed, first_index=i)
    return out
