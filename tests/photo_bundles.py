"""A pair of ImageNet-convention RGB bundles for the photo tests (service and page): a linear probe
written as a hand-built ONNX graph, so that a test can compute the expected logits by hand
(plain Pillow + numpy), never with the service's own preprocessing."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from rbn.contract.bundle import InputSpec, write_bundle

LABELS = ["cat", "coffee", "rocket", "astronaut", "other"]
RBN, BN = "photo-rbn", "photo-bn"
# the ImageNet statistics, one per channel, written out by hand for the references
MEAN = np.array([0.485, 0.456, 0.406]).reshape(3, 1, 1)
STD = np.array([0.229, 0.224, 0.225]).reshape(3, 1, 1)


def spec(size: int) -> InputSpec:
    """RGB, shorter side to round(size / 0.875), centre crop size x size, ImageNet mean/std, bilinear."""
    return InputSpec.imagenet(size=size, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@lru_cache
def weights(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(W, B) of the probe: logits = flatten(x) @ W + B, logits of order one."""
    rng = np.random.default_rng(24)
    pixels = 3 * size * size
    return (rng.standard_normal((pixels, len(LABELS))) / np.sqrt(pixels)).astype(np.float32), \
        rng.standard_normal(len(LABELS)).astype(np.float32)


def write_photo_bundle(repo: Path, name: str, norm: str, baseline: str | None = None, ood: dict | None = None,
                       size: int = 64) -> Path:
    """The probe as a bundle; rbn_stats = per-channel means of the input (three 'layers'); with ``ood``,
    an `ood_score` output (the energy, -logsumexp of the logits) and that calibration."""
    w, b = weights(size)
    f32 = TensorProto.FLOAT
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "b"], ["logits"]),
             helper.make_node("ReduceMean", ["input", "hw"], ["rbn_stats"], keepdims=0)]
    outputs = [helper.make_tensor_value_info("logits", f32, ["batch", len(LABELS)]),
               helper.make_tensor_value_info("rbn_stats", f32, ["batch", 3])]
    if ood is not None:
        nodes += [helper.make_node("ReduceLogSumExp", ["logits", "last"], ["lse"], keepdims=1),
                  helper.make_node("Neg", ["lse"], ["ood_score"])]
        outputs.append(helper.make_tensor_value_info("ood_score", f32, ["batch", 1]))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", f32, ["batch", 3, size, size])], outputs,
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
         numpy_helper.from_array(np.array([2, 3], np.int64), "hw"), numpy_helper.from_array(np.array([1], np.int64), "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    meta = {"name": name, "architecture": "linear-probe", "norm": norm, "baseline": baseline, "labels": LABELS,
            "input": spec(size).model_dump(), "stats_layers": ["red", "green", "blue"], "max_batch_size": 8, "ood": ood}
    return write_bundle(repo, meta, model.SerializeToString())


def write_photo_pair(repo: Path, size: int = 64) -> None:
    """photo-bn and photo-rbn (its baseline): the same graph, so an A/B comparison agrees exactly."""
    write_photo_bundle(repo, BN, "bn", size=size)
    write_photo_bundle(repo, RBN, "rbn", baseline=BN, size=size)


def reference_logits(image: Image.Image, size: int = 64) -> np.ndarray:
    """By hand: shorter side to round(size / 0.875) (the longer to int(that * long / short)), bilinear;
    the centre size x size (torchvision's rounding); (x / 255 - mean) / std per channel; the probe in float64."""
    short = round(size / 0.875)
    image = image.convert("RGB")
    w, h = image.size
    scaled = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    left, top = int(round((scaled[0] - size) / 2.0)), int(round((scaled[1] - size) / 2.0))
    pixels = np.asarray(image.resize(scaled, Image.Resampling.BILINEAR))[top : top + size, left : left + size]
    x = (pixels.transpose(2, 0, 1) / 255.0 - MEAN) / STD
    weight, bias = weights(size)
    return x.reshape(-1) @ weight.astype(np.float64) + bias


def energy_by_hand(logits: np.ndarray) -> float:
    """-logsumexp(logits)."""
    return float(-(logits.max() + np.log(np.exp(logits - logits.max()).sum())))
