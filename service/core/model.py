"""A served model and its work, in KServe's shape: ``preprocess`` (uploads -> input tensor),
``infer`` (tensor -> graph outputs, through the batcher) and ``describe`` (outputs -> the per-image
answers); plus loading every bundle of the repository and choosing the primary model.

``Model.open(bundle_dir)`` builds one without a server (no batcher, no decode pool, no metrics):
``predict(pixels)`` then runs decode-free images straight through the session on the calling thread,
for benchmarks, tools and peers that must do exactly the service's work. It reads the graph through
``rbn.contract.graph.GraphRunner``, as ``rbn evaluate`` does."""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rbn.contract.graph import GraphRunner
from rbn.contract.bundle import LOGITS_NAME, SCORE_NAME, STATS_NAME, BundleError, BundleMeta, InputSpec, validate_bundle
from service.core import imaging
from service.core.answers import Prediction, flagged
from service.core.batching import Batcher, BatchSlice
from service.core.corrupting import corrupt_images
from service.core.config import Settings
from service.core.decoding import Decoder, Upload
from service.core.errors import InvalidArgument
from service.core.imaging import Normalizer
from service.core.metrics import Metrics
from service.core.ood import OodScorer
from service.core.predictions import describe, softmax
from service.core.repository import Bundle
from service.core.runtime import CudaOptions, ModelRuntime, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inference:
    """The graph's outputs for one request's images, and how long they waited and ran."""

    outputs: dict[str, np.ndarray]  # every graph output by name (rbn.contract.bundle.graph_outputs)
    queue_s: float
    infer_s: float
    batch_size: int

    @property
    def logits(self) -> np.ndarray:
        return self.outputs[LOGITS_NAME]

    @property
    def stats(self) -> np.ndarray:
        return self.outputs[STATS_NAME]

    @property
    def graph_score(self) -> np.ndarray | None:
        """(N, 1) `ood_score` for bundles that compute it in the graph, else None."""
        return self.outputs.get(SCORE_NAME)


@dataclass(frozen=True)
class Description:
    """``describe``'s result: the probabilities and one answer per image."""

    probs: np.ndarray  # (N, K) float64
    predictions: list[Prediction]

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


class Model:
    """One bundle being served: its runtime, batcher, OOD scorer and normalizer, and its paired baseline."""

    def __init__(self, bundle: Bundle, runtime: ModelRuntime, batcher: Batcher | None = None,
                 decoder: Decoder | None = None, metrics: Metrics | None = None) -> None:
        self.bundle = bundle
        self.meta: BundleMeta = bundle.meta
        self.name = bundle.meta.name
        self.runtime = runtime
        self.batcher = batcher
        self.max_batch_size = self.meta.max_batch_size if batcher is None else batcher.max_batch_size
        self.scorer = OodScorer(self.meta)
        # predict's path: the contract's normalisation, the graph in batches of at most max_batch_size, by name
        self.graph = GraphRunner(runtime.run, runtime.output_names, self.meta.input, self.max_batch_size)
        self.normalize: Normalizer = self.graph.normalize
        self.baseline: Model | None = None
        self._decoder = decoder
        self._metrics = metrics

    def __repr__(self) -> str:
        return f"Model({self.name!r} v{self.meta.version})"

    @classmethod
    def open(cls, bundle_dir: str | Path, providers: str = "cpu", intra_op_threads: int = 0) -> Model:
        """A bundle folder, validated as the server does -> a model usable without a server (``predict``);
        nothing is warmed up. Raises BundleError for a bad bundle."""
        bundle = Bundle(validate_bundle(Path(bundle_dir), check_graph=False), Path(bundle_dir))
        return cls(bundle, ModelRuntime(bundle.meta, bundle.onnx_file, providers, intra_op_threads))

    def predict(self, pixels: np.ndarray, top_k: int = 1) -> list[Prediction]:
        """uint8 (N, C, H, W) images in this model's input shape -> one answer each, run in batches of at
        most ``max_batch_size`` on the calling thread (the service's normalisation, graph and description; no
        batcher, no metrics)."""
        inference = Inference(self.graph.outputs(pixels), 0.0, 0.0, min(len(pixels), self.max_batch_size))
        return self.describe(inference, top_k).predictions

    # --- preprocess -> infer -> describe ------------------------------------------------------
    async def decode(self, uploads: list[Upload]) -> np.ndarray:
        """Uploads -> uint8 (N, C, H, W) in this model's input shape."""
        if self._decoder is None:
            raise RuntimeError(f"{self!r} was opened without a server: decode the images yourself and call predict")
        return await self._decoder.decode(uploads, self.meta.input)

    async def corrupt(self, images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
        """uint8 (N, C, H, W) images corrupted server-side (/ab), in the decode pool when they are large."""
        if self._decoder is None:
            return corrupt_images(images, name, severity, seed)
        return await self._decoder.corrupt(images, name, severity, seed)

    async def preprocess(self, uploads: list[Upload]) -> np.ndarray:
        """Uploads -> the float32 (N, C, H, W) input tensor."""
        return self.normalize(await self.decode(uploads))

    async def infer(self, x: np.ndarray) -> Inference:
        """Run (N, C, H, W) float32 through the batcher, in chunks of at most max_batch_size."""
        if self.batcher is None:
            raise RuntimeError(f"{self!r} was opened without a server: call predict")
        size = self.max_batch_size
        if len(x) <= size:
            results = [await self.batcher.submit(x)]
        else:
            results = await asyncio.gather(*(self.batcher.submit(x[i : i + size]) for i in range(0, len(x), size)))
        return _join(self.runtime.output_names, results)

    def scores(self, inference: Inference) -> np.ndarray | None:
        """(N,) calibrated OOD scores; None for an uncalibrated bundle."""
        return self.scorer.scores(inference.stats, inference.graph_score)

    def describe(self, inference: Inference, top_k: int) -> Description:
        """Per image: predicted label, top-k with probabilities, OOD block."""
        probs = softmax(inference.logits)
        answers = describe(probs, inference.stats, self.scores(inference), self.meta.labels, self.scorer, top_k,
                           self.scorer.uncalibrated_scores(inference.logits))
        return Description(probs, answers)

    def count_described(self, described: Description) -> None:
        """Per-model predicted class, OOD score and flag counters, from the answers themselves."""
        if self._metrics is None:
            return
        observe = self._metrics.observe_prediction
        for p in described.predictions:
            observe(self.name, p.label, p.ood.score, bool(p.ood.flag))

    def count(self, predicted: np.ndarray, scores: list[float | None]) -> None:
        """The same counters for a tensor request, which gets no described answer."""
        if self._metrics is None:
            return
        labels, observe, threshold = self.meta.labels, self._metrics.observe_prediction, self.scorer.threshold
        for index, score in zip(predicted.tolist(), scores, strict=True):
            observe(self.name, labels[index], score, bool(flagged(score, threshold)))

    def label_index(self, value: str | None) -> int | None:
        """A class index or name of this model's labels -> index (``parse_label``)."""
        return parse_label(value, self.meta.labels)


def parse_label(value: str | None, labels: list[str]) -> int | None:
    """A class index ('7') or a name ('Sneaker', any case) -> index; InvalidArgument otherwise."""
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


def _join(names: list[str], results: list[BatchSlice]) -> Inference:
    if len(results) == 1:
        r = results[0]
        return Inference(dict(zip(names, r.outputs, strict=True)), r.queue_s, r.infer_s, r.batch_size)
    return Inference(
        {name: np.concatenate([r.outputs[i] for r in results]) for i, name in enumerate(names)},
        max(r.queue_s for r in results),
        max(r.infer_s for r in results),
        max(r.batch_size for r in results),
    )


# Below this many pixels per image a full batch always wins: the per-batch overhead dominates, the activations
# stay in the caches (the 28x28 ResNet-20s here: 0.6-0.75 ms per image in batches of 4-32, 0.9-1.2 ms alone).
SEARCH_FROM_PIXELS = 96 * 96


def searches_batch_size(setting: str, spec: InputSpec) -> bool:
    """Whether warm-up times the batch sizes (``Settings.batch_size_search``) for a model taking ``spec``."""
    return setting == "on" or (setting == "auto" and spec.height * spec.width >= SEARCH_FROM_PIXELS)


def load_model(bundle: Bundle, settings: Settings, metrics: Metrics, decoder: Decoder) -> Model:
    """Create the session, check it against the metadata and warm up every batch size (blocking)."""
    meta = bundle.meta
    runtime = ModelRuntime(meta, bundle.onnx_file, settings.providers, settings.intra_op_threads,
                           CudaOptions.from_settings(settings))
    max_batch = min(settings.max_batch_size, meta.max_batch_size)
    warm = runtime.warm_up(max_batch)
    if searches_batch_size(settings.batch_size_search, meta.input) and max_batch > 1:
        searched, per_image = runtime.fastest_batch(max_batch)
        log.info("model %s: batches of up to %d images (ms per image at batch %s)", meta.name, searched,
                 ", ".join(f"{n}: {ms:.2f}" for n, ms in per_image.items()))
        max_batch = searched
    imaging.warm_up(meta.input)
    # Settings guarantees max_queue_size >= max_batch_size >= max_batch: the queue holds a full batch.
    batcher = Batcher(
        meta.name, runtime.run, max_batch, settings.max_queue_delay_ms / 1000.0, settings.max_queue_size,
        settings.instances, settings.retry_after_s, metrics.batch_observer(meta.name),
        max_queue_wait_s=settings.max_queue_wait_s, unready_after_failures=settings.unready_after_failures,
    )
    log.info("model %s v%d (%s) on %s: warmed up batch sizes 1..%d in %.2f s",
             meta.name, meta.version, meta.norm, runtime.provider, max_batch, warm)
    if meta.ood is None:
        log.warning("model %s: no OOD calibration in model.json; its answers report an uncalibrated score "
                    "and flag nothing", meta.name)
    return Model(bundle, runtime, batcher, decoder, metrics)


def load_all(bundles: list[Bundle], settings: Settings, metrics: Metrics, decoder: Decoder,
             errors: dict[str, str]) -> dict[str, Model]:
    """Load every bundle; a bundle that fails for any reason is reported in ``errors`` and skipped,
    never crashing the others. Only ProviderError (the requested provider is absent) is fatal."""
    models: dict[str, Model] = {}
    for bundle in bundles:
        try:
            models[bundle.name] = load_model(bundle, settings, metrics, decoder)
        except ProviderError:
            raise
        except Exception as exc:  # BundleError, or whatever ONNX Runtime raises (e.g. CUDA out of memory)
            errors[bundle.name] = str(exc) if isinstance(exc, BundleError) else f"{bundle.name}: {_first_line(exc)}"
            log.error("skipping bundle %s: %s", bundle.name, errors[bundle.name])
    pair_baselines(models)
    return models


def _first_line(exc: Exception) -> str:
    first = str(exc).partition("\n")[0]
    return f"{type(exc).__name__}: {first}"


def pair_baselines(models: dict[str, Model]) -> None:
    """Link each RBN model to its loaded baseline when both take the same input."""
    for model in models.values():
        name = model.meta.baseline
        if name is None:
            continue
        baseline = models.get(name)
        if baseline is None:
            log.warning("model %s: baseline %s is not loaded; /ab and shadow traffic are off for it", model.name, name)
        elif baseline.meta.input != model.meta.input or baseline.meta.labels != model.meta.labels:
            log.warning("model %s: baseline %s takes another input or labels; not paired", model.name, name)
        else:
            model.baseline = baseline


def choose_primary(norms: dict[str, str], configured: str | None) -> str | None:
    """From {model name: norm}: the configured primary model (None if absent),
    else the first RBN model by name, else the first model."""
    names = sorted(norms)
    if configured is not None:
        return configured if configured in norms else None
    rbn = [n for n in names if norms[n] == "rbn"]
    return (rbn or names or [None])[0]
