"""The protocol-independent data plane: routes a request to its model's preprocess -> infer ->
describe, and assembles the typed answer (``service.core.answers``; each front end renders it). Shadow
traffic and the A/B comparison start here; the models do the work."""

from __future__ import annotations

import asyncio
import base64
import time
import numpy as np

from service.core.abstats import AbTally
from service.core.answers import AbAnswer, CorruptionRequest, LabelRef, ModelRef, PredictAnswer, Timings
from service.core.compare import compare
from service.core.decoding import Upload
from service.core.errors import NoBaseline
from service.core.imaging import to_png
from service.core.metrics import NO_CORRUPTION
from service.core.model import Inference, Model
from service.core.state import ServiceState


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _timings(start: float, decoded: float, result: Inference) -> Timings:
    return Timings(_ms(decoded - start), _ms(result.queue_s), _ms(result.infer_s), result.batch_size,
                   _ms(time.perf_counter() - start))


def _name_files(items: list, uploads: list[Upload]) -> None:
    for item, upload in zip(items, uploads, strict=True):
        item.filename = upload.filename


class DataPlane:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.ab_tally = AbTally()  # GET /ab/summary: this process's comparisons

    async def predict(self, model: Model, uploads: list[Upload], top_k: int) -> PredictAnswer:
        """Classify uploads (rendered over HTTP as a ``PredictResponse``)."""
        start = time.perf_counter()
        x = await model.preprocess(uploads)
        decoded = time.perf_counter()
        result = await model.infer(x)
        described = model.describe(result, top_k)
        self.state.shadow.maybe_run(model, x, described.predicted)
        model.count_described(described)
        _name_files(described.predictions, uploads)
        return PredictAnswer(ModelRef(model.name, model.meta.version), described.predictions,
                             _timings(start, decoded, result))

    async def infer_tensor(self, model: Model, x: np.ndarray) -> Inference:
        """Preprocessed float32 (N, C, H, W) straight to the model (the Open Inference Protocol path)."""
        result = await model.infer(x)
        scores = model.scores(result)
        model.count(result.logits.argmax(axis=1), [None] * len(x) if scores is None else scores.tolist())
        return result

    async def ab(self, model: Model, uploads: list[Upload], corruption: CorruptionRequest | None,
                 label: int | None, top_k: int, input_png: bool = False) -> AbAnswer:
        """Both arms on the same (optionally corrupted) preprocessed tensor, compared (rendered over HTTP
        as an ``AbResponse``); with ``input_png`` each result carries that image as a base64 PNG."""
        baseline = model.baseline
        if baseline is None:
            raise NoBaseline(f"model {model.name} has no loaded baseline to compare with"
                             + (f" (it names {model.meta.baseline})" if model.meta.baseline else ""))
        start = time.perf_counter()
        images = await model.decode(uploads)
        if corruption is not None:
            images = await model.corrupt(images, corruption.name, corruption.severity, corruption.seed)
        x = model.normalize(images)
        decoded = time.perf_counter()
        result, base = await asyncio.gather(model.infer(x), baseline.infer(x))
        arms = model.describe(result, top_k), baseline.describe(base, top_k)
        results = compare(model, baseline, arms, label)
        _name_files(results, uploads)
        if input_png:
            for item, image in zip(results, images, strict=True):
                item.input_png = base64.b64encode(to_png(image)).decode("ascii")
        shift = (NO_CORRUPTION, 0) if corruption is None else (corruption.name, corruption.severity)
        self.state.metrics.observe_ab(model.name, baseline.name, *shift, results)
        self.ab_tally.add(model.name, baseline.name, *shift, results)
        timings = _timings(start, decoded, result)
        timings.baseline_inference_ms = _ms(base.infer_s)
        return AbAnswer(corruption, None if label is None else LabelRef(label, model.meta.labels[label]), results, timings)
