"""A/B comparison: distances between two arms' probabilities, correctness, the per-image result, and
server-side corruption."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rbn.contract.corruptions import corrupt

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


def compare(model: Model, baseline: Model, arms: tuple[Description, Description], label: int | None) -> list[dict]:
    """One ``AbResult`` per image from the two arms' ``Description``s (``model``'s first)."""
    (a, b), results = arms, []
    l1, kl = l1_distance(a.probs, b.probs), kl_divergence(a.probs, b.probs)
    for i, (x, y) in enumerate(zip(a.predictions, b.predictions, strict=True)):
        item = {
            "arms": {
                "rbn": {"model": model.name, "version": model.meta.version, **x},
                "baseline": {"model": baseline.name, "version": baseline.meta.version, **y},
            },
            "agree": x["index"] == y["index"],
            "l1_distance": float(l1[i]),
            "kl_divergence": float(kl[i]),
            "correct": None,
            "winner": None,
        }
        if label is not None:
            item["correct"] = {"rbn": x["index"] == label, "baseline": y["index"] == label}
            item["winner"] = verdict(x["index"] == label, y["index"] == label)
        results.append(item)
    return results
