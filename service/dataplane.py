"""The protocol-independent data plane: look up the model, decode, infer, describe.

Routes call these and only encode; answers are plain dicts (serialised with orjson)."""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

import numpy as np

from service.compare import corrupt_images, kl_divergence, l1_distance, verdict
from service.errors import InvalidArgument, NoBaseline, ServiceError
from service.imaging import open_image, render
from service.metrics import NO_CORRUPTION
from service.predictions import describe, softmax
from service.registry import Inference, LoadedModel
from service.state import ServiceState

INLINE_PIXELS = 256 * 256  # images up to this size decode on the event loop; larger ones in a thread


@dataclass(frozen=True)
class Upload:
    data: bytes
    filename: str | None = None


@dataclass(frozen=True)
class Corruption:
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


class DataPlane:
    def __init__(self, state: ServiceState) -> None:
        self.state = state
        self.metrics = state.metrics

    async def images(self, model: LoadedModel, uploads: list[Upload]) -> np.ndarray:
        """Decode uploads to uint8 (N, C, H, W); an error names the file when there are several."""
        spec = model.meta.input
        max_pixels = self.state.settings.max_image_pixels
        out = np.empty((len(uploads), spec.channels, spec.height, spec.width), np.uint8)
        heavy = []
        for i, upload in enumerate(uploads):
            try:
                image = open_image(upload.data, max_pixels)
                if image.width * image.height <= INLINE_PIXELS:
                    out[i] = render(image, spec)
                else:
                    heavy.append((i, image))
            except ServiceError as exc:
                raise _for_file(exc, i, upload, len(uploads)) from None
        if heavy:
            loop = asyncio.get_running_loop()
            pool = self.state.decode_pool
            done = await asyncio.gather(*(loop.run_in_executor(pool, render, image, spec) for _, image in heavy),
                                        return_exceptions=True)
            for (i, _), pixels in zip(heavy, done, strict=True):
                if isinstance(pixels, ServiceError):
                    raise _for_file(pixels, i, uploads[i], len(uploads))
                if isinstance(pixels, BaseException):
                    raise pixels
                out[i] = pixels
        return out

    async def predict(self, model: LoadedModel, uploads: list[Upload], top_k: int) -> dict:
        start = time.perf_counter()
        x = model.normalise(await self.images(model, uploads))
        decoded = time.perf_counter()
        result = await model.infer(x)
        probs = softmax(result.logits)
        scores = model.scorer.scores(result.stats, result.graph_score)
        answers = describe(probs, result.stats, scores, model.meta.labels, model.scorer, top_k)
        predicted = probs.argmax(axis=1)
        self.state.shadow.maybe_run(model, x, predicted)
        self.count(model, predicted, [a["ood"]["score"] for a in answers])
        for answer, upload in zip(answers, uploads, strict=True):
            if upload.filename is not None:
                answer["filename"] = upload.filename
        return {
            "model": {"name": model.name, "version": model.meta.version},
            "predictions": answers,
            "timings": _timings(start, decoded, result),
        }

    def count(self, model: LoadedModel, predicted: np.ndarray, scores: list[float | None]) -> None:
        """Per-model predicted class, OOD score and flag counters."""
        labels, observe = model.meta.labels, self.metrics.observe_prediction
        for index, score in zip(predicted.tolist(), scores, strict=True):
            observe(model.name, labels[index], score, score is not None and score > model.scorer.threshold)

    async def infer_tensor(self, model: LoadedModel, x: np.ndarray) -> Inference:
        """Preprocessed float32 (N, C, H, W) straight to the model (the Open Inference Protocol path)."""
        result = await model.infer(x)
        scores = model.scorer.scores(result.stats, result.graph_score)
        self.count(model, result.logits.argmax(axis=1), [None] * len(x) if scores is None else scores.tolist())
        return result

    async def ab(self, model: LoadedModel, uploads: list[Upload], corruption: Corruption | None,
                 label: int | None, top_k: int) -> dict:
        """Both arms on the same (optionally corrupted) preprocessed tensor, compared."""
        baseline = model.baseline
        if baseline is None:
            raise NoBaseline(f"model {model.name} has no loaded baseline to compare with"
                             + (f" (it names {model.meta.baseline})" if model.meta.baseline else ""))
        start = time.perf_counter()
        images = await self.images(model, uploads)
        if corruption is not None:
            images = corrupt_images(images, corruption.name, corruption.severity, corruption.seed)
        x = model.normalise(images)
        decoded = time.perf_counter()
        result, base = await asyncio.gather(model.infer(x), baseline.infer(x))
        p, q = softmax(result.logits), softmax(base.logits)
        arms = (describe(p, result.stats, model.scorer.scores(result.stats, result.graph_score),
                         model.meta.labels, model.scorer, top_k),
                describe(q, base.stats, baseline.scorer.scores(base.stats, base.graph_score),
                         baseline.meta.labels, baseline.scorer, top_k))
        l1, kl = l1_distance(p, q), kl_divergence(p, q)
        labels = model.meta.labels
        results = []
        for i, upload in enumerate(uploads):
            a, b = arms[0][i], arms[1][i]
            item = {
                "arms": {
                    "rbn": {"model": model.name, "version": model.meta.version, **a},
                    "baseline": {"model": baseline.name, "version": baseline.meta.version, **b},
                },
                "agree": a["index"] == b["index"],
                "l1_distance": float(l1[i]),
                "kl_divergence": float(kl[i]),
                "correct": None,
                "winner": None,
            }
            if label is not None:
                item["correct"] = {"rbn": a["index"] == label, "baseline": b["index"] == label}
                item["winner"] = verdict(a["index"] == label, b["index"] == label)
            if upload.filename is not None:
                item["filename"] = upload.filename
            results.append(item)
        self._count_ab(model, baseline.name, corruption, results)
        timings = _timings(start, decoded, result)
        timings["baseline_inference_ms"] = _ms(base.infer_s)
        return {
            "corruption": None if corruption is None else vars(corruption),
            "label": None if label is None else {"index": label, "name": labels[label]},
            "results": results,
            "timings": timings,
        }

    def _count_ab(self, model: LoadedModel, baseline: str, corruption: Corruption | None, results: list[dict]) -> None:
        m = self.metrics
        name = NO_CORRUPTION if corruption is None else corruption.name
        severity = "0" if corruption is None else str(corruption.severity)
        for item in results:
            m.ab.labels(model.name, baseline, name, severity, str(item["agree"]).lower()).inc()
            if item["correct"] is not None:
                m.ab_labelled.labels(model.name, name, severity).inc()
                for arm, right in item["correct"].items():
                    if right:
                        m.ab_correct.labels(model.name, arm, name, severity).inc()


def parse_label(value: str | None, labels: list[str]) -> int | None:
    """A class index ('7') or a name ('Sneaker', any case) -> index; 422 otherwise."""
    if value is None or value == "":
        return None
    value = value.strip()
    if re.fullmatch(r"-?[0-9]+", value):  # ASCII digits only: str.isdigit() accepts '²', which int() refuses
        index = int(value)
        if 0 <= index < len(labels):
            return index
        raise InvalidArgument(f"label index {index} is out of range 0..{len(labels) - 1}")
    folded = {name.casefold(): i for i, name in enumerate(labels)}
    index = folded.get(value.casefold())
    if index is None:
        raise InvalidArgument(f"unknown label {value!r}; valid: {', '.join(labels)} or an index 0..{len(labels) - 1}")
    return index


def _for_file(exc: ServiceError, index: int, upload: Upload, count: int) -> ServiceError:
    """The same error, naming the file when the request holds several or the file has a name."""
    if count == 1 and upload.filename is None:
        return exc
    name = f" ({upload.filename})" if upload.filename else ""
    return type(exc)(f"file {index}{name}: {exc.message}", exc.headers)
