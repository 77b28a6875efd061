"""The service's work on one bundle, for the peer servers: PNG bytes -> input tensor -> graph -> JSON answer.

Every peer (BentoML, Ray Serve, KServe, PyTriton) wraps this one object so that the comparison measures
the frameworks, not four re-implementations: decoding is the service's own (``service.core.imaging.decode``
with its default pixel limit, or ``render`` for an image a peer already opened), and everything after it
is the service's own model without a server, ``service.core.model.Model.open(bundle).predict`` (the same
normalisation, session options, outputs and answer: softmax, top-k, the OOD verdict with the in-graph
score). Only numpy, Pillow, ONNX Runtime, pydantic, pydantic-settings and prometheus-client are needed,
which every peer's venv installs (bench/peers/requirements-common.txt); the service's core imports no web
framework.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from service.core.config import Settings
from service.core.imaging import decode, render
from service.core.model import Model

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = ROOT / "models" / "fmnist-resnet20-rbn"
MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
DEFAULT_TOP_K: int = Settings.model_fields["default_top_k"].default  # /predict without ?top_k


class Pipeline:
    """One bundle: ``decode`` (bytes -> uint8 (C, H, W)) and ``predict`` (a batch of encoded images -> one
    JSON-ready answer each, as /predict gives it)."""

    def __init__(self, bundle_dir: str | os.PathLike | None = None, providers: str | None = None,
                 intra_op_threads: int | None = None) -> None:
        bundle_dir = Path(bundle_dir or os.environ.get("PEER_BUNDLE") or DEFAULT_BUNDLE)
        providers = providers or os.environ.get("PEER_PROVIDERS", "cpu")
        threads = int(os.environ.get("PEER_INTRA_OP_THREADS", "0")) if intra_op_threads is None else intra_op_threads
        self.core = Model.open(bundle_dir, providers, threads)
        self.meta = self.core.meta
        self.model = {"name": self.meta.name, "version": self.meta.version}
        self.core.runtime.warm_up(min(self.meta.max_batch_size, 64))

    def decode(self, data: bytes | Image.Image) -> np.ndarray:
        """Encoded bytes, or an image a peer has already opened (BentoML opens uploads with Pillow) ->
        uint8 (C, H, W)."""
        if isinstance(data, Image.Image):
            return render(data, self.meta.input)
        return decode(data, self.meta.input, MAX_PIXELS)

    def predict(self, images: list[bytes] | list[Image.Image], top_k: int = DEFAULT_TOP_K) -> list[dict]:
        """One answer ({"model", "predictions": [one]}) per image, the images run as one batch."""
        if not images:
            return []
        pixels = np.stack([self.decode(data) for data in images])
        return [{"model": self.model, "predictions": [answer.to_json()]} for answer in self.core.predict(pixels, top_k)]
