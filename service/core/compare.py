"""A/B comparison: distances between two arms' probabilities, the per-image ``AbResult``, and
server-side corruption."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from rbn.contract.corruptions import corrupt
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


def content_key(image: np.ndarray) -> int:
    """A 64-bit key of an image's pixels and shape: the same image gives the same key wherever it comes."""
    digest = hashlib.blake2b(image.tobytes(), digest_size=8, person=b"rbn-ab")
    digest.update(repr(image.shape).encode())
    return int.from_bytes(digest.digest(), "little")


def corrupt_images(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Corrupt uint8 (N, C, H, W) images; every channel of an image gets the same random draws.

    An image's random draws come from ``seed`` and its own pixels (``content_key``), never its position
    in the request: the same image gets the same corruption alone, at any index and in any batch size,
    so /ab and ab-eval answer the same for the same image."""
    out = np.empty_like(images)
    for i, image in enumerate(images):
        key = content_key(image)
        for c, channel in enumerate(image):
            out[i, c] = corrupt(channel, name, severity, seed, first_index=key)
    return out


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
