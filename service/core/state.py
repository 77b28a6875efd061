"""The service's state and life cycle: scan the repository, load and warm up off the event loop,
readiness, drain on shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Literal

from service.core.batching import Workers
from service.core.config import Settings
from service.core.decoding import Decoder
from service.core.errors import ModelNotFound, NotReady
from service.core.metrics import LiveState, Metrics
from service.core.model import Model, choose_primary, load_all
from service.core.repository import scan
from service.core.runtime import CudaOptions, ModelRuntime, ProviderError, provider_list
from service.core.shadow import Shadow

log = logging.getLogger(__name__)

Phase = Literal["loading", "ready", "draining", "failed"]


class StartupError(RuntimeError):
    """The service cannot serve at all (no valid bundle, missing primary model, provider absent)."""


class ServiceState:
    """Everything the routes share; one per app."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self.primary: str | None = None
        self.errors: dict[str, str] = {}  # bundle -> why it is not served
        self.phase: Phase = "loading"
        self.fatal: str | None = None
        self.in_flight = 0
        self.shadow = Shadow(settings.shadow_fraction, settings.shadow_max_pending, metrics)
        self.decoder = Decoder(settings)
        self.on_fatal: Callable[[str], None] | None = None  # set by the server runner to exit the process
        self.on_ready: Callable[[], None] | None = None  # set by the server runner: process-wide tuning
        self._loader: asyncio.Task | None = None
        self._loading: asyncio.Future | None = None  # load_all in its (daemon) thread
        self._bundles: list | None = None
        metrics.register_live(self.live)

    @property
    def ready(self) -> bool:
        return self.phase == "ready" and self.unhealthy is None

    @property
    def unhealthy(self) -> str | None:
        """Why a loaded service should get no traffic (a model's batcher died or keeps failing), else None."""
        reasons = [m.batcher.unhealthy for m in self.models.values() if m.batcher.unhealthy]
        return "; ".join(reasons) if reasons else None

    def live(self) -> LiveState:
        queues = {name: (m.batcher.queued_images, m.batcher.running) for name, m in self.models.items()}
        return LiveState(self.ready, self.in_flight, queues)

    def model(self, name: str | None) -> Model:
        """The named model, or the primary one; 404 for a name not served, 503 while loading."""
        if not self.models:
            if self.phase == "loading":
                raise NotReady("models are still loading and warming up; retry shortly",
                               headers={"Retry-After": str(self.settings.retry_after_s)})
            raise NotReady(f"no model is being served ({self.fatal or self.phase})")
        key = name or self.primary
        model = self.models.get(key)
        if model is None:
            raise ModelNotFound(f"model {name!r} is not served; available: {', '.join(sorted(self.models))}")
        return model

    # --- life cycle -----------------------------------------------------------------------------
    def prepare(self) -> None:
        """Fast checks that must fail the start (StartupError): provider present, a valid bundle, the primary model."""
        if self._bundles is not None:
            return
        settings = self.settings
        try:
            provider_list(settings.providers, CudaOptions.from_settings(settings))
        except RuntimeError as exc:
            raise StartupError(str(exc)) from None
        found = scan(settings.model_repository)
        self.errors.update(found.errors)
        if not found.bundles:
            detail = "; ".join(found.errors.values()) or "it holds no <name>/model.json"
            raise StartupError(f"no servable bundle in {settings.model_repository}: {detail}")
        norms = {b.name: b.meta.norm for b in found.bundles}
        if choose_primary(norms, settings.primary_model) is None:
            raise StartupError(f"primary model {settings.primary_model!r} is not among the valid bundles {sorted(norms)}")
        if settings.providers == "cuda":
            self._check_cuda_session(found.bundles)
        self.metrics.bundle_errors.set(len(self.errors))
        self._bundles = found.bundles

    def _check_cuda_session(self, bundles: list) -> None:
        """providers=cuda: onnxruntime-gpu lists CUDA as available with no GPU or driver at all; only a
        session shows whether it runs on CUDA. Create one (no warm-up) before the listener opens, so a
        GPU image without a usable GPU exits at once instead of after it started answering."""
        settings = self.settings
        failures = []
        for bundle in bundles:
            try:
                ModelRuntime(bundle.meta, bundle.onnx_file, "cuda", settings.intra_op_threads,
                             CudaOptions.from_settings(settings))
            except ProviderError as exc:
                raise StartupError(str(exc)) from None
            except Exception as exc:  # this bundle may be broken (the loader reports it): try the next one
                failures.append(f"{bundle.name}: {str(exc).partition(chr(10))[0]}")
                continue
            return
        raise StartupError(f"providers=cuda but no bundle gets a CUDA session: {'; '.join(failures)}")

    async def start(self) -> None:
        """``prepare``, then load and warm up in the background; readiness turns true when done."""
        self.prepare()
        self._loader = asyncio.get_running_loop().create_task(self._load(self._bundles), name="load-models")

    async def _load(self, bundles) -> None:
        try:
            # A daemon thread: a warm-up that hangs must not keep a stopped process alive (to_thread's is joined at exit).
            workers = Workers(1, "load-models")
            self._loading = asyncio.wrap_future(workers.submit(load_all, bundles, self.settings, self.metrics, self.decoder, self.errors))
            workers.shutdown(wait=False)  # the thread ends after this one call
            models = await asyncio.shield(self._loading)
            norms = {name: m.meta.norm for name, m in models.items()}
            primary = choose_primary(norms, self.settings.primary_model)
            if primary is None:
                raise StartupError(f"no model could be loaded as primary; errors: {self.errors}")
            for model in models.values():
                model.batcher.start()
                meta = model.meta
                self.metrics.model_info.labels(meta.name, str(meta.version), meta.norm, model.runtime.provider,
                                               meta.baseline or "").set(1)
            if any(m.runtime.provider == "cuda" for m in models.values()):
                self.metrics.register_gpu()
            self.models, self.primary = models, primary
            self.metrics.bundle_errors.set(len(self.errors))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail(f"loading models failed: {exc}")
            return
        if self.on_ready is not None:
            try:
                self.on_ready()
            except Exception:  # tuning only: never keep a loaded service from turning ready
                log.exception("start-up tuning failed; serving anyway")
        if self.phase == "loading":
            self.phase = "ready"
            self.metrics.live_changed()
            log.info("ready: serving %s (primary %s)", ", ".join(sorted(self.models)), self.primary)

    def _fail(self, message: str) -> None:
        self.phase = "failed"
        self.fatal = message
        if self.on_fatal is None:
            log.critical(message)
        else:  # the server runner says it (once, with --workers) and exits 1
            self.on_fatal(message)

    def unfinished(self) -> list[str]:
        """Work still running in a thread after ``stop``: a model load, batches that never returned."""
        out = ["loading models"] if self._loading is not None and not self._loading.done() else []
        out += [f"{n}: {m.batcher.abandoned} batch(es)" for n, m in sorted(self.models.items()) if m.batcher.abandoned]
        return out

    async def wait_loaded(self) -> None:
        if self._loader is not None:
            await asyncio.gather(self._loader, return_exceptions=True)

    def begin_drain(self) -> None:
        """Readiness turns false; requests keep being served until the listener closes."""
        if self.phase in ("loading", "ready"):
            self.phase = "draining"
            self.metrics.live_changed()
            log.info("draining: readiness is false, finishing in-flight requests")

    async def stop(self) -> None:
        """After the HTTP server stopped taking requests: finish shadow work and queued batches, free threads."""
        self.begin_drain()
        if self._loader is not None and not self._loader.done():
            self._loader.cancel()
            await asyncio.gather(self._loader, return_exceptions=True)
        await self.shadow.stop()
        timeout = self.settings.graceful_timeout_s
        await asyncio.gather(*(m.batcher.stop(timeout) for m in self.models.values() if m.batcher.started))
        self.decoder.shutdown()
