"""The service's work on one bundle, for the peer servers: PNG bytes -> input tensor -> graph -> JSON answer.

Every peer (BentoML, Ray Serve, KServe, PyTriton) wraps this one object so that the comparison measures
the frameworks, not four re-implementations: decoding and preprocessing are the service's own
(``service.core.imaging.decode`` and ``Normalizer``, with its default pixel limit), inference is the service's
own ``ModelRuntime`` (same session options, same outputs), and the answer is the service's own
``describe`` (softmax, top-k, the OOD block with the in-graph score). Only numpy, Pillow, ONNX Runtime,
pydantic, pydantic-settings and FastAPI (for the service's error types) are needed, which every peer's
venv installs (bench/peers/requirements-common.txt).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rbn.contract.bundle import onnx_path, read_meta
from service.core.config import Settings
from PIL import Image

from service.core.imaging import Normalizer, decode, render
from service.core.ood import OodScorer
from service.core.predictions import describe, softmax
from service.core.runtime import ModelRuntime

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "fmnist-resnet20-rbn"
MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
DEFAULT_TOP_K: int = Settings.model_fields["default_top_k"].default  # /predict without ?top_k


class Pipeline:
    """One bundle: ``decode`` (bytes -> uint8 (C, H, W)), ``infer`` (uint8 (N, C, H, W) -> graph outputs),
    ``answers`` (outputs -> one JSON-ready dict per image), and ``predict`` doing all three on a batch."""

    def __init__(self, bundle_dir: str | os.PathLike | None = None, providers: str | None = None,
                 intra_op_threads: int | None = None) -> None:
        bundle_dir = Path(bundle_dir or os.environ.get("PEER_BUNDLE") or DEFAULT_BUNDLE)
        providers = providers or os.environ.get("PEER_PROVIDERS", "cpu")
        threads = int(os.environ.get("PEER_INTRA_OP_THREADS", "0")) if intra_op_threads is None else intra_op_threads
        self.meta = read_meta(bundle_dir)
        self.runtime = ModelRuntime(self.meta, onnx_path(bundle_dir, self.meta.version), providers, threads)
        self.normalize = Normalizer(self.meta.input)
        self.scorer = OodScorer(self.meta)
        self.model = {"name": self.meta.name, "version": self.meta.version}
        self.runtime.warm_up(min(self.meta.max_batch_size, 64))

    def decode(self, data: bytes | Image.Image) -> np.ndarray:
        """Encoded bytes, or an image a peer has already opened (BentoML opens uploads with Pillow) ->
        uint8 (C, H, W)."""
        if isinstance(data, Image.Image):
            return render(data, self.meta.input)
        return decode(data, self.meta.input, MAX_PIXELS)

    def infer(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.runtime.run(self.normalize(pixels))
        return dict(zip(self.runtime.output_names, outputs, strict=True))

    def answers(self, outputs: dict[str, np.ndarray], top_k: int = DEFAULT_TOP_K) -> list[dict]:
        stats = outputs["rbn_stats"]
        scores = self.scorer.scores(stats, outputs.get("ood_score"))
        return describe(softmax(outputs["logits"]), stats, scores, self.meta.labels, self.scorer, top_k)

    def predict(self, images: list[bytes] | list[Image.Image], top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """One answer ({"model", "predictions": [one]}) per image, the images run as one batch."""
        if not images:
            return []
        pixels = np.stack([self.decode(data) for data in images])
        return [{"model": self.model, "predictions": [answer]} for answer in self.answers(self.infer(pixels), top_k)]
