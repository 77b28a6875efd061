"""Checkpoint -> ONNX -> bundle in the model repository."""

from __future__ import annotations

import hashlib
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from rbn.experiments import data as fmnist
from rbn.contract.bundle import write_bundle
from rbn.experiments.evaluate import EvalConfig, OnnxClassifier, OodFit, fit_ood
from rbn.library.export import export_onnx, stats_channels, stats_layers
from rbn.library.ood_graph import add_score_output
from rbn.library.resnet import ResNet, build

INPUT_SHAPE = (fmnist.INPUT.channels, fmnist.INPUT.height, fmnist.INPUT.width)  # one declaration: data.INPUT


class CheckpointError(Exception):
    pass


def load_checkpoint(path: str | Path) -> tuple[ResNet, dict]:
    """The eval-mode model and training recipe stored by rbn.experiments.train."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        recipe = state["recipe"]
        model = build(recipe["arch"], recipe["norm"], in_channels=INPUT_SHAPE[0], num_classes=len(fmnist.LABELS))
        model.load_state_dict(state["model"])
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (KeyError, RuntimeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a checkpoint written by `rbn train` ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model, {**recipe, "history": state.get("history", [])}


def _check_score_parity(onnx_bytes: bytes, fitted: OodFit, images: np.ndarray) -> None:
    """The graph's float32 `ood_score` must be the numpy score the threshold was set on."""
    predictions = OnnxClassifier(onnx_bytes).predict(images)
    reference = fitted.served.score(predictions.logits, predictions.channel_stats)
    error = float(np.abs(predictions.graph_score - reference).max())
    if error > 1e-4 * (1 + float(np.abs(reference).max())):
        raise ValueError(f"the graph's ood_score differs from the fitted score by {error:.3g}")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bundle_from_checkpoint(
    checkpoint: str | Path,
    repository: str | Path,
    name: str,
    baseline: str | None = None,
    version: int = 1,
    evaluation: dict | None = None,
    data_path: str | None = None,
    max_batch_size: int = 64,
) -> Path:
    """Export, fit the OOD score on clean training data, write it into the graph, and write the bundle."""
    model, recipe = load_checkpoint(checkpoint)
    onnx_bytes = export_onnx(model, input_shape=INPUT_SHAPE)
    train = fmnist.load_split("train", data_path)
    fitted = fit_ood(OnnxClassifier(onnx_bytes), EvalConfig(), train)
    channels = stats_channels(model, INPUT_SHAPE)
    if list(fitted.served.channels) != channels:
        raise ValueError(f"the graph's layer widths {list(fitted.served.channels)} are not the model's {channels}")
    onnx_bytes = add_score_output(onnx_bytes, fitted.served)
    _check_score_parity(onnx_bytes, fitted, train.images[fitted.splits.held[:1000]])
    history = recipe.pop("history")
    meta = {
        "name": name,
        "version": version,
        "architecture": recipe["arch"],
        "norm": recipe["norm"],
        "baseline": baseline,
        "labels": list(fmnist.LABELS),
        "input": {"channels": 1, "height": 28, "width": 28, "mean": [fmnist.MEAN], "std": [fmnist.STD]},
        "stats_layers": stats_layers(model, INPUT_SHAPE),
        "stats_channels": channels,
        "max_batch_size": max_batch_size,
        "ood": fitted.calibration.model_dump(),
        "provenance": {
            "dataset": "Fashion-MNIST (Debian package dataset-fashion-mnist), 60k train / 10k test",
            "recipe": recipe,
            "seed": recipe.get("seed"),
            "commit": _git_commit(),
            "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "checkpoint_sha256": hashlib.sha256(Path(checkpoint).read_bytes()).hexdigest(),
        },
        "evaluation": evaluation or ({"final_test_accuracy_torch": history[-1]["test_accuracy"]} if history else None),
    }
    return write_bundle(Path(repository), meta, onnx_bytes)
