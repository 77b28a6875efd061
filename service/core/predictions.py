"""Logits -> probabilities and the per-image answer (``Prediction``: top-k labels, OOD verdict)."""

from __future__ import annotations

import numpy as np

from service.core.answers import ClassScore, Prediction
from service.core.ood import OodScorer


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable for large logits)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(probs: np.ndarray, k: int) -> np.ndarray:
    """(N, K) -> (N, k) class indices by falling probability (ties: lower index first)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def describe(probs: np.ndarray, stats: np.ndarray, scores: np.ndarray | None, labels: list[str],
             scorer: OodScorer, k: int, uncalibrated: np.ndarray | None = None) -> list[Prediction]:
    """The answer for each image: predicted label, top-k with probabilities, OOD verdict (``scores``
    from ``scorer.scores``; for an uncalibrated bundle, ``uncalibrated`` from ``scorer.uncalibrated_scores``)."""
    k = min(k, len(labels))
    best = top_k(probs, k)
    answers = []
    for i, row in enumerate(best.tolist()):
        p = probs[i]
        top = [ClassScore(labels[j], j, float(p[j])) for j in row]  # only the k read (1000 classes at ImageNet size)
        verdict = scorer.verdict(stats[i], None if scores is None else scores[i],
                                 None if uncalibrated is None else uncalibrated[i])
        answers.append(Prediction(top[0].label, top[0].index, top[0].probability, top, verdict))
    return answers
