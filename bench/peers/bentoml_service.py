"""The RBN bundle as a BentoML service with adaptive batching (BentoML 1.4's ``@bentoml.service`` SDK).

Run in the BentoML venv (bench/peers/run.py does), from the repository root:

    PEER_WORKERS=1 PEER_MAX_BATCH_SIZE=32 PEER_MAX_LATENCY_MS=1000 \\
        .peers/bentoml/bin/bentoml serve bench.peers.bentoml_service:RbnClassifier --host 127.0.0.1 --port 3000

One batchable API, ``POST /predict``: multipart field ``images`` (Pillow images, as BentoML's image
examples take them); BentoML's dispatcher merges concurrent requests into one call of up to
``PEER_MAX_BATCH_SIZE`` images, waiting at most what its latency model allows under
``PEER_MAX_LATENCY_MS`` (the SLO it batches against, not a fixed delay; a request its latency model
expects to miss the SLO is answered 503 at once). Each request answers a list with
one rbn-serve answer per image. ``PEER_WORKERS`` worker processes (BentoML's ``workers``), each with its
own ONNX Runtime session of ``PEER_INTRA_OP_THREADS`` threads (0: the service's default).
"""

from __future__ import annotations

import os

import bentoml
from PIL.Image import Image

from bench.peers.pipeline import Pipeline

WORKERS = int(os.environ.get("PEER_WORKERS", "1"))
MAX_BATCH_SIZE = int(os.environ.get("PEER_MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("PEER_MAX_LATENCY_MS", "1000"))


# Access logs off, as in the other servers (rbn-serve runs with --log-level warning).
@bentoml.service(workers=WORKERS, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class RbnClassifier:
    """Decode, preprocess, batched ONNX Runtime inference and the answer: bench/peers/pipeline.py."""

    def __init__(self) -> None:
        self.pipeline = Pipeline()

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH_SIZE, max_latency_ms=MAX_LATENCY_MS)
    def predict(self, images: list[Image]) -> list[dict]:
        return self.pipeline.predict(images)
