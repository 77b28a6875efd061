"""Evaluate exported models: clean accuracy, corruption robustness, OOD detection from rbn_stats.

Works on ONNX bytes through ONNX Runtime (CPU), so it measures exactly what the service runs;
a checkpoint is exported in memory first (see rbn.cli). Torch-free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from rbn import data as fmnist
from rbn.bundle import OodCalibration
from rbn.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt
from rbn.ood import calibrate, score

Progress = Callable[[str], None]


@dataclass
class Predictions:
    labels: np.ndarray  # (N,) predicted class
    stats: np.ndarray  # (N, L) rbn_stats


class OnnxClassifier:
    """An ONNX Runtime session over uint8 Fashion-MNIST-shaped images."""

    def __init__(self, onnx_bytes: bytes, threads: int = 0, batch_size: int = 256) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        self.batch_size = batch_size

    def predict(self, images_u8: np.ndarray) -> Predictions:
        labels, stats = [], []
        for i in range(0, len(images_u8), self.batch_size):
            logits, s = self.session.run(["logits", "rbn_stats"], {"input": fmnist.normalize(images_u8[i : i + self.batch_size])})
            labels.append(logits.argmax(1))
            stats.append(s)
        return Predictions(np.concatenate(labels), np.concatenate(stats))


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an OOD sample scores above an in-distribution one (ties count half)."""
    scores = np.concatenate([in_scores, out_scores])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    n_in, n_out = len(in_scores), len(out_scores)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def fpr_at_95_tpr(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Fraction of in-distribution samples flagged when the threshold catches 95% of OOD ones."""
    threshold = np.quantile(out_scores, 0.05)
    return float((in_scores >= threshold).mean())


def detection(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict:
    return {
        "auroc": auroc(in_scores, out_scores),
        "fpr_at_95_tpr": fpr_at_95_tpr(in_scores, out_scores),
        "flag_rate": float((out_scores > threshold).mean()),
    }


@dataclass
class EvalConfig:
    corruption_samples: int = 10_000  # first N test images used for the corruption suite
    calibration_samples: int = 10_000  # training images used to fit the OOD standardisation
    seed: int = 0
    families: tuple[str, ...] = CORRUPTION_NAMES
    severities: tuple[int, ...] = SEVERITIES
    combine: str = "rms_z"  # two-sided: shifts either way are anomalous


@dataclass
class EvalResult:
    clean_accuracy: float
    corruption_accuracy: dict[str, list[float]]  # family -> accuracy per severity
    mean_corruption_accuracy: float
    ood: dict[str, dict]  # family or 'far_ood_digits' -> detection metrics
    calibration: OodCalibration
    seconds: float
    score_samples: dict[str, list[float]] = field(default_factory=dict)  # for histograms
    combine_sensitivity: dict[str, dict] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "clean_accuracy": self.clean_accuracy,
            "corruption_accuracy": self.corruption_accuracy,
            "mean_corruption_accuracy": self.mean_corruption_accuracy,
            "ood": self.ood,
            "calibration": self.calibration.model_dump(),
            "seconds": self.seconds,
            "combine_sensitivity": self.combine_sensitivity,
        }


def fit_calibration(model: OnnxClassifier, config: EvalConfig, data_path: str | None = None) -> OodCalibration:
    train = fmnist.load_split("train", data_path)
    rng = np.random.default_rng(config.seed)
    idx = rng.choice(len(train.images), size=min(config.calibration_samples, len(train.images)), replace=False)
    return calibrate(model.predict(train.images[np.sort(idx)]).stats, how=config.combine)


def evaluate(model: OnnxClassifier, config: EvalConfig, data_path: str | None = None, progress: Progress = print) -> EvalResult:
    """The full suite for one model. Corrupted sets are regenerated per model from the same seed."""
    from rbn.far_ood import load_digits_28

    started = time.monotonic()
    test = fmnist.load_split("test", data_path)
    calibration = fit_calibration(model, config, data_path)
    clean = model.predict(test.images)
    clean_accuracy = float((clean.labels == test.labels).mean())
    clean_scores = score(clean.stats, calibration)
    progress(f"clean accuracy {clean_accuracy:.4f}")
    ood: dict[str, dict] = {"clean_test": {"flag_rate": float((clean_scores > calibration.threshold).mean())}}

    images, labels = test.images[: config.corruption_samples], test.labels[: config.corruption_samples]
    in_scores = clean_scores[: config.corruption_samples]
    corruption_accuracy: dict[str, list[float]] = {}
    samples: dict[str, list[float]] = {"clean": _sample(clean_scores)}
    family_stats: dict[str, np.ndarray] = {}
    for family in config.families:
        accs, family_scores, stats = [], [], []
        for severity in config.severities:
            pred = model.predict(corrupt(images, family, severity, seed=config.seed))
            accs.append(float((pred.labels == labels).mean()))
            family_scores.append(score(pred.stats, calibration))
            stats.append(pred.stats)
        corruption_accuracy[family] = accs
        family_stats[family] = np.concatenate(stats)
        pooled = np.concatenate(family_scores)
        ood[family] = detection(in_scores, pooled, calibration.threshold)
        ood[family]["per_severity_auroc"] = [auroc(in_scores, s) for s in family_scores]
        samples[family] = _sample(pooled)
        progress(f"{family}: accuracy {' '.join(f'{a:.3f}' for a in accs)}  AUROC {ood[family]['auroc']:.3f}")

    digits = model.predict(load_digits_28())
    digit_scores = score(digits.stats, calibration)
    ood["far_ood_digits"] = detection(clean_scores, digit_scores, calibration.threshold)
    samples["far_ood_digits"] = _sample(digit_scores)
    progress(f"far-OOD digits AUROC {ood['far_ood_digits']['auroc']:.3f}")
    mean_corruption = float(np.mean([a for accs in corruption_accuracy.values() for a in accs]))
    sensitivity = combine_sensitivity(calibration, clean.stats, family_stats, digits.stats, config.corruption_samples)
    return EvalResult(clean_accuracy, corruption_accuracy, mean_corruption, ood, calibration, time.monotonic() - started, samples, sensitivity)


def _sample(scores: np.ndarray, n: int = 1000) -> list[float]:
    """An evenly spaced subset, rounded: enough for a histogram, small enough to commit."""
    picked = scores[np.linspace(0, len(scores) - 1, min(n, len(scores))).astype(int)]
    return [round(float(v), 4) for v in picked]


def combine_sensitivity(calibration: OodCalibration, clean: np.ndarray, families: dict[str, np.ndarray], far: np.ndarray, n: int) -> dict:
    """AUROCs under every way of combining the layers, with the same per-layer standardisation.

    Reported beside the pre-registered choice (calibration.combine) to show how much the choice
    matters; it is not used to pick one, which would tune on the OOD test data.
    """
    out = {}
    for how in ("mean_z", "max_z", "rms_z"):
        cal = calibration.model_copy(update={"combine": how})
        clean_scores = score(clean, cal)
        out[how] = {
            "far_ood_digits_auroc": auroc(clean_scores, score(far, cal)),
            "mean_corruption_auroc": float(np.mean([auroc(clean_scores[:n], score(s, cal)) for s in families.values()])),
        }
    return out


def relative_corruption_error(model: dict, baseline: dict) -> dict[str, float]:
    """mCE-style: per family, sum of errors over severities divided by the baseline's (BN = 1)."""
    out = {}
    for family, accs in model["corruption_accuracy"].items():
        base_err = sum(1 - a for a in baseline["corruption_accuracy"][family])
        out[family] = sum(1 - a for a in accs) / base_err if base_err > 0 else float("nan")
    out["mean"] = float(np.mean([v for k, v in out.items()]))
    return out


def summary(doc: dict) -> dict:
    """The headline numbers of one evaluation, for a bundle's model.json."""
    families = list(doc["corruption_accuracy"])
    return {
        "clean_accuracy": round(doc["clean_accuracy"], 4),
        "mean_corruption_accuracy": round(doc["mean_corruption_accuracy"], 4),
        "far_ood_digits_auroc": round(doc["ood"]["far_ood_digits"]["auroc"], 4),
        "mean_corruption_auroc": round(float(np.mean([doc["ood"][f]["auroc"] for f in families])), 4),
        "far_ood_digits_flag_rate": round(doc["ood"]["far_ood_digits"]["flag_rate"], 4),
        "clean_test_flag_rate": round(doc["ood"].get("clean_test", {}).get("flag_rate", float("nan")), 4),
        "test_set": "Fashion-MNIST test, 10k images; corruptions: first "
        f"{doc['config']['corruption_samples']} images x {len(families)} families x 5 severities",
    }
