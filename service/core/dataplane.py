"""The protocol-independent data plane: routes a request to its model's preprocess -> infer ->
describe, and assembles the answer (shapes: ``service.http.routes.schemas``). Shadow traffic and the A/B
comparison start here; the models do the work."""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass

import numpy as np

from service.core.abstats import AbTally
from service.core.compare import compare, corrupt_images
from service.core.decoding import Upload
from service.core.errors import NoBaseline
from service.core.imaging import to_png
from service.core.metrics import NO_CORRUPTION
from service.core.model import Inference, Model
from service.core.state import ServiceState


@dataclass(frozen=True)
class CorruptionRequest:
    """The server-side corruption an /ab request asks for."""

    name: str
    severity: int
    seed: int = 0


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _timings(start: float, decoded: float, result: Inference) -> dict:
    return {
        "decode_ms": _ms(decoded - start),
        "queue_ms": _ms(result.queue_s),
        "inference_ms": _ms(result.infer_s),
        "batch_size": result.batch_size,
        "total_ms": _ms(time.perf_counter() - start),
    }


def _name_files(items: list[dict], uploads: list[Upload]) -> None:
    for item, upload in zip(items, uploads, strict=True):
        if upload.filename is not None:
            item["filename"] = upload.filename


class DataPlane:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.ab_tally = AbTally()  # GET /ab/summary: this process's comparisons

    async def predict(self, model: Model, uploads: list[Upload], top_k: int) -> dict:
        """A ``PredictResponse``."""
        start = time.perf_counter()
        x = await model.preprocess(uploads)
        decoded = time.perf_counter()
        result = await model.infer(x)
        described = model.describe(result, top_k)
        self.state.shadow.maybe_run(model, x, described.predicted)
        model.count_described(described)
        _name_files(described.predictions, uploads)
        return {
            "model": {"name": model.name, "version": model.meta.version},
            "predictions": described.predictions,
            "timings": _timings(start, decoded, result),
        }

    async def infer_tensor(self, model: Model, x: np.ndarray) -> Inference:
        """Preprocessed float32 (N, C, H, W) straight to the model (the Open Inference Protocol path)."""
        result = await model.infer(x)
        scores = model.scores(result)
        model.count(result.logits.argmax(axis=1), [None] * len(x) if scores is None else scores.tolist())
        return result

    async def ab(self, model: Model, uploads: list[Upload], corruption: CorruptionRequest | None,
                 label: int | None, top_k: int, input_png: bool = False) -> dict:
        """An ``AbResponse``: both arms on the same (optionally corrupted) preprocessed tensor, compared;
        with ``input_png`` each result carries that image as a base64 PNG."""
        baseline = model.baseline
        if baseline is None:
            raise NoBaseline(f"model {model.name} has no loaded baseline to compare with"
                             + (f" (it names {model.meta.baseline})" if model.meta.baseline else ""))
        start = time.perf_counter()
        images = await model.decode(uploads)
        if corruption is not None:
            images = corrupt_images(images, corruption.name, corruption.severity, corruption.seed)
        x = model.normalize(images)
        decoded = time.perf_counter()
        result, base = await asyncio.gather(model.infer(x), baseline.infer(x))
        arms = model.describe(result, top_k), baseline.describe(base, top_k)
        results = compare(model, baseline, arms, label)
        _name_files(results, uploads)
        if input_png:
            for item, image in zip(results, images, strict=True):
                item["input_png"] = base64.b64encode(to_png(image)).decode("ascii")
        shift = (NO_CORRUPTION, 0) if corruption is None else (corruption.name, corruption.severity)
        self.state.metrics.observe_ab(model.name, baseline.name, *shift, results)
        self.ab_tally.add(model.name, baseline.name, *shift, results)
        timings = _timings(start, decoded, result)
        timings["baseline_inference_ms"] = _ms(base.infer_s)
        return {
            "corruption": None if corruption is None else vars(corruption),
            "label": None if label is None else {"index": label, "name": model.meta.labels[label]},
            "results": results,
            "timings": timings,
        }
