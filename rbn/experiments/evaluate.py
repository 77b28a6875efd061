"""Evaluate exported models: clean accuracy, corruption robustness, OOD detection.

Works on ONNX bytes through ONNX Runtime (CPU), read through the graph runner the service's
Model.predict calls too (rbn.contract.graph.GraphRunner), so it measures exactly
what the service runs; a checkpoint is exported in memory first (see rbn.cli). Torch-free.

OOD: every candidate score of rbn.contract.ood (and the first, `rms_z` from `rbn_stats`) is fitted on
clean *training* images only (``clean_splits``), reported on every test set, and its threshold
is the 95th percentile on held-out clean training images. The served one is
``EvalConfig.method``, chosen on generated validation OOD (rbn.experiments.ood_data.validation_sets) as
RESULTS.md's pre-registration says; the validation AUROCs are recorded too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

from rbn.experiments import data as fmnist
from rbn.contract import ood
from rbn.experiments.ood_fit import fit_scorer
from rbn.contract.bundle import CHANNEL_STATS_NAME, LOGITS_NAME, SCORE_NAME, STATS_NAME, GraphOodCalibration
from rbn.contract.graph import GraphRunner
from rbn.contract.corruptions import CORRUPTION_NAMES, SEVERITIES, corrupt

Progress = Callable[[str], None]
SERVED_METHOD = "maha+energy"  # pre-registered in RESULTS.md on validation OOD


@dataclass
class Predictions:
    logits: np.ndarray  # (N, K)
    stats: np.ndarray  # (N, L) rbn_stats
    channel_stats: np.ndarray  # (N, sum C) rbn_channel_stats
    graph_score: np.ndarray | None = None  # (N,) the graph's ood_score, when it has one

    @property
    def labels(self) -> np.ndarray:
        return self.logits.argmax(axis=1)


class OnnxClassifier:
    """An ONNX Runtime session over uint8 Fashion-MNIST-shaped images."""

    def __init__(self, onnx_bytes: bytes, threads: int = 0, batch_size: int = 256) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.onnx_bytes = onnx_bytes
        self.session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        names = {o.name for o in self.session.get_outputs()}
        if CHANNEL_STATS_NAME not in names:
            raise ValueError(f"the graph has no {CHANNEL_STATS_NAME!r} output: re-export it with this version (rbn export)")
        self.outputs = [LOGITS_NAME, STATS_NAME, CHANNEL_STATS_NAME] + ([SCORE_NAME] if SCORE_NAME in names else [])
        self.batch_size = batch_size
        # The service's path from uint8 pixels to named outputs, with the input spec every Fashion-MNIST bundle
        # declares: the graph sees here exactly the tensors it sees behind /predict
        run = lambda x: self.session.run(self.outputs, {fmnist.INPUT.name: x})  # noqa: E731
        self.graph = GraphRunner(run, self.outputs, fmnist.INPUT, batch_size)

    def predict(self, images_u8: np.ndarray) -> Predictions:
        """uint8 (N, 28, 28) Fashion-MNIST images -> the graph's outputs."""
        out = self.graph.outputs(images_u8[:, None])
        score = out[SCORE_NAME].reshape(-1) if SCORE_NAME in out else None
        return Predictions(out[LOGITS_NAME], out[STATS_NAME], out[CHANNEL_STATS_NAME], score)


def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Probability that an OOD sample scores above an in-distribution one (ties count half)."""
    truth = np.concatenate([np.zeros(len(in_scores)), np.ones(len(out_scores))])
    return float(roc_auc_score(truth, np.concatenate([in_scores, out_scores])))


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
    fit_samples: int = 20_000  # training images the per-layer Gaussians are fitted on
    calibration_samples: int = 10_000  # other training images: standardisation and threshold
    validation_samples: int = 1_000  # images per generated validation OOD set
    seed: int = 0
    families: tuple[str, ...] = CORRUPTION_NAMES
    severities: tuple[int, ...] = SEVERITIES
    method: str = SERVED_METHOD
    clean_quantile: float = 0.95


@dataclass(frozen=True)
class CleanSplits:
    """Disjoint index sets into the training images (one seeded permutation)."""

    fit: np.ndarray
    held: np.ndarray
    validation: np.ndarray


def clean_splits(n_train: int, config: EvalConfig) -> CleanSplits:
    order = np.random.default_rng(config.seed).permutation(n_train)
    a = config.fit_samples
    b = a + config.calibration_samples
    c = b + 5 * config.validation_samples
    if c > n_train:
        raise ValueError(f"the splits need {c} training images, there are {n_train}")
    return CleanSplits(np.sort(order[:a]), np.sort(order[a:b]), np.sort(order[b:c]))


ScoreFn = Callable[[Predictions], np.ndarray]


@dataclass
class OodFit:
    """Every candidate score fitted on clean training data, with its threshold."""

    scores: dict[str, ScoreFn]
    thresholds: dict[str, float]
    served: ood.Scorer
    calibration: GraphOodCalibration
    held: Predictions
    splits: CleanSplits


def fit_ood(model: OnnxClassifier, config: EvalConfig, train: fmnist.Split) -> OodFit:
    """Fit all candidates on the training splits; the served scorer is ``config.method``."""
    splits = clean_splits(len(train.images), config)
    fit = model.predict(train.images[splits.fit])
    held = model.predict(train.images[splits.held])
    channels = _channels(model)
    scores: dict[str, ScoreFn] = {}
    scorers = {m: fit_scorer(m, fit.channel_stats, train.labels[splits.fit], channels, held.logits, held.channel_stats)
               for m in ood.METHODS}
    for name, scorer in scorers.items():
        scores[name] = lambda p, s=scorer: s.score(p.logits, p.channel_stats)
    # the logit scores without standardisation ("energy" is already above, standardised: same ranking)
    scores.update({name: (lambda p, f=fn: f(p.logits)) for name, fn in ood.LOGIT_SCORES.items() if name not in scores})
    rms = ood.calibrate_rms(held.stats, "rms_z", config.clean_quantile)
    scores["rms_z"] = lambda p: ood.rms_score(p.stats, rms)
    thresholds = {name: ood.threshold(fn(held), config.clean_quantile) for name, fn in scores.items()}
    calibration = GraphOodCalibration(
        method=config.method, threshold=thresholds[config.method], clean_quantile=config.clean_quantile,
        calibration_samples=len(splits.held), fit_samples=len(splits.fit),
    )
    return OodFit(scores, thresholds, scorers[config.method], calibration, held, splits)


def _channels(model: OnnxClassifier) -> list[int]:
    """Channels per layer, read from the graph: the width of each layer's part of rbn_channel_stats."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(model.onnx_bytes)).graph
    concat = next(node for node in graph.node if CHANNEL_STATS_NAME in node.output)
    widths = {info.name: info.type.tensor_type.shape.dim[-1].dim_value for info in graph.value_info}
    channels = [widths.get(name, 0) for name in concat.input]
    if concat.op_type != "Concat" or not all(channels):
        raise ValueError(f"cannot read the layer widths of {CHANNEL_STATS_NAME} from the graph")
    return channels


@dataclass
class EvalResult:
    clean_accuracy: float
    corruption_accuracy: dict[str, list[float]]  # family -> accuracy per severity
    mean_corruption_accuracy: float
    ood: dict[str, dict]  # the served score: family or far-OOD set -> detection metrics
    ood_methods: dict[str, dict]  # every candidate: set -> {auroc, fpr_at_95_tpr, flag_rate}
    ood_validation: dict[str, dict]  # every candidate: validation set -> AUROC
    calibration: GraphOodCalibration
    seconds: float
    score_samples: dict[str, list[float]] = field(default_factory=dict)  # for histograms

    def to_json(self) -> dict:
        return {
            "clean_accuracy": self.clean_accuracy,
            "corruption_accuracy": self.corruption_accuracy,
            "mean_corruption_accuracy": self.mean_corruption_accuracy,
            "ood": self.ood,
            "ood_methods": self.ood_methods,
            "ood_validation": self.ood_validation,
            "calibration": self.calibration.model_dump(),
            "seconds": self.seconds,
        }


def evaluate(model: OnnxClassifier, config: EvalConfig, data_path: str | None = None, progress: Progress = print) -> EvalResult:
    """The full suite for one model. Corrupted sets are regenerated per model from the same seed."""
    from rbn.experiments.ood_data import far_ood_sets, validation_sets

    started = time.monotonic()
    test = fmnist.load_split("test", data_path)
    train = fmnist.load_split("train", data_path)
    fitted = fit_ood(model, config, train)
    names = list(fitted.scores)
    clean = model.predict(test.images)
    clean_accuracy = float((clean.labels == test.labels).mean())
    clean_scores = {m: fitted.scores[m](clean) for m in names}
    progress(f"clean accuracy {clean_accuracy:.4f}")
    methods: dict[str, dict] = {m: {"clean_test": {"flag_rate": float((clean_scores[m] > fitted.thresholds[m]).mean())}} for m in names}

    def record(set_name: str, in_scores: dict[str, np.ndarray], out: Predictions | dict[str, np.ndarray]) -> None:
        for m in names:
            out_scores = out[m] if isinstance(out, dict) else fitted.scores[m](out)
            methods[m][set_name] = detection(in_scores[m], out_scores, fitted.thresholds[m])

    n = config.corruption_samples
    images, labels = test.images[:n], test.labels[:n]
    in_scores = {m: s[:n] for m, s in clean_scores.items()}
    corruption_accuracy: dict[str, list[float]] = {}
    served = config.method
    samples: dict[str, list[float]] = {"clean": _sample(clean_scores[served])}
    per_severity: dict[str, list[float]] = {}
    for family in config.families:
        accs, pooled = [], {m: [] for m in names}
        for severity in config.severities:
            pred = model.predict(corrupt(images, family, severity, seed=config.seed))
            accs.append(float((pred.labels == labels).mean()))
            for m in names:
                pooled[m].append(fitted.scores[m](pred))
        corruption_accuracy[family] = accs
        per_severity[family] = [auroc(in_scores[served], s) for s in pooled[served]]
        record(family, in_scores, {m: np.concatenate(v) for m, v in pooled.items()})
        samples[family] = _sample(np.concatenate(pooled[served]))
        progress(f"{family}: accuracy {' '.join(f'{a:.3f}' for a in accs)}  AUROC {methods[served][family]['auroc']:.3f}")

    for set_name, set_images in far_ood_sets().items():
        pred = model.predict(set_images)
        record(set_name, clean_scores, pred)
        samples[set_name] = _sample(fitted.scores[served](pred))
        progress(f"{set_name}: AUROC {methods[served][set_name]['auroc']:.4f} (energy {methods['energy'][set_name]['auroc']:.4f})")
    for m in names:
        methods[m]["mean_corruption_auroc"] = float(np.mean([methods[m][f]["auroc"] for f in config.families]))

    held_scores = {m: fitted.scores[m](fitted.held) for m in names}
    validation: dict[str, dict] = {m: {} for m in names}
    for set_name, set_images in validation_sets(train.images[fitted.splits.validation], config.validation_samples).items():
        pred = model.predict(set_images)
        for m in names:
            validation[m][set_name] = auroc(held_scores[m], fitted.scores[m](pred))

    ood_served = {k: v for k, v in methods[served].items() if k != "mean_corruption_auroc"}
    for family in config.families:
        ood_served[family] = {**ood_served[family], "per_severity_auroc": per_severity[family]}
    mean_corruption = float(np.mean([a for accs in corruption_accuracy.values() for a in accs]))
    return EvalResult(clean_accuracy, corruption_accuracy, mean_corruption, ood_served, methods, validation,
                      fitted.calibration, time.monotonic() - started, samples)


def _sample(scores: np.ndarray, n: int = 1000) -> list[float]:
    """An evenly spaced subset, rounded: enough for a histogram, small enough to commit."""
    picked = scores[np.linspace(0, len(scores) - 1, min(n, len(scores))).astype(int)]
    return [round(float(v), 4) for v in picked]


def relative_corruption_error(model: dict, baseline: dict) -> dict[str, float]:
    """mCE-style: per family, sum of errors over severities divided by the baseline's (BN = 1)."""
    out = {}
    for family, accs in model["corruption_accuracy"].items():
        base_err = sum(1 - a for a in baseline["corruption_accuracy"][family])
        out[family] = sum(1 - a for a in accs) / base_err if base_err > 0 else float("nan")
    out["mean"] = float(np.mean([v for k, v in out.items()]))
    return out


def far_ood_names(doc: dict) -> list[str]:
    """The far-OOD test sets an evaluation document reports, in its order."""
    return [k for k in doc["ood"] if k.startswith("far_ood_")]


def summary(doc: dict) -> dict:
    """The headline numbers of one evaluation, for a bundle's model.json."""
    families = list(doc["corruption_accuracy"])
    out = {
        "clean_accuracy": round(doc["clean_accuracy"], 4),
        "mean_corruption_accuracy": round(doc["mean_corruption_accuracy"], 4),
        "ood_method": doc["calibration"].get("method", doc["calibration"].get("combine")),
        "mean_corruption_auroc": round(float(np.mean([doc["ood"][f]["auroc"] for f in families])), 4),
        "clean_test_flag_rate": round(doc["ood"].get("clean_test", {}).get("flag_rate", float("nan")), 4),
    }
    for name in far_ood_names(doc):
        out[f"{name}_auroc"] = round(doc["ood"][name]["auroc"], 4)
        out[f"{name}_flag_rate"] = round(doc["ood"][name]["flag_rate"], 4)
    out["test_set"] = ("Fashion-MNIST test, 10k images; corruptions: first "
                       f"{doc['config']['corruption_samples']} images x {len(families)} families x 5 severities; "
                       "far-OOD sets: rbn/experiments/ood_data.py")
    return out
