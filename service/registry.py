"""Loaded models: a bundle with its runtime, batcher, OOD scorer and normaliser, and the lookup of them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import numpy as np

from rbn.bundle import LOGITS_NAME, SCORE_NAME, STATS_NAME, BundleError
from service import imaging
from service.batching import Batcher, Result
from service.config import Settings
from service.imaging import Normaliser
from service.metrics import Metrics
from service.ood import OodScorer
from service.repository import Bundle
from service.runtime import ModelRuntime, ProviderError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inference:
    outputs: dict[str, np.ndarray]  # every graph output by name (rbn.bundle.graph_outputs)
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


@dataclass(eq=False)
class LoadedModel:
    bundle: Bundle
    runtime: ModelRuntime
    batcher: Batcher
    scorer: OodScorer
    normalise: Normaliser
    max_batch_size: int
    warm_up_s: float = 0.0
    baseline: LoadedModel | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.bundle.meta.name

    @property
    def meta(self):
        return self.bundle.meta

    @property
    def max_request_images(self) -> int:
        """The most images one request can hold: all its chunks must fit in the batch queue at once."""
        return self.batcher.max_queue_size

    async def infer(self, x: np.ndarray) -> Inference:
        """Run (N, C, H, W) float32 through the batcher, in chunks of at most max_batch_size."""
        size = self.max_batch_size
        if len(x) <= size:
            results = [await self.batcher.submit(x)]
        else:
            results = await asyncio.gather(*(self.batcher.submit(x[i : i + size]) for i in range(0, len(x), size)))
        return _join(self.runtime.output_names, results)


def _join(names: list[str], results: list[Result]) -> Inference:
    if len(results) == 1:
        r = results[0]
        return Inference(dict(zip(names, r.outputs, strict=True)), r.queue_s, r.infer_s, r.batch_size)
    return Inference(
        {name: np.concatenate([r.outputs[i] for r in results]) for i, name in enumerate(names)},
        max(r.queue_s for r in results),
        max(r.infer_s for r in results),
        max(r.batch_size for r in results),
    )


def load_model(bundle: Bundle, settings: Settings, metrics: Metrics) -> LoadedModel:
    """Create the session, check it against the metadata and warm up every batch size (blocking)."""
    meta = bundle.meta
    runtime = ModelRuntime(meta, bundle.onnx_file, settings.providers, settings.intra_op_threads, settings.cuda_device)
    max_batch = min(settings.max_batch_size, meta.max_batch_size)
    warm = runtime.warm_up(max_batch)
    imaging.warm_up(meta.input)
    batcher = Batcher(
        meta.name, runtime.run, max_batch, settings.max_queue_delay_ms / 1000.0, max(settings.max_queue_size, max_batch),
        settings.instances, settings.retry_after_s, metrics.batch_observer(meta.name),
    )
    log.info("model %s v%d (%s) on %s: warmed up batch sizes 1..%d in %.2f s",
             meta.name, meta.version, meta.norm, runtime.provider, max_batch, warm)
    return LoadedModel(bundle, runtime, batcher, OodScorer(meta), Normaliser(meta.input), max_batch, warm)


def load_all(bundles: list[Bundle], settings: Settings, metrics: Metrics,
             errors: dict[str, str]) -> dict[str, LoadedModel]:
    """Load every bundle; a bundle that fails for any reason is reported in ``errors`` and skipped,
    never crashing the others. Only ProviderError (the requested provider is absent) is fatal."""
    models: dict[str, LoadedModel] = {}
    for bundle in bundles:
        try:
            models[bundle.name] = load_model(bundle, settings, metrics)
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


def pair_baselines(models: dict[str, LoadedModel]) -> None:
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
