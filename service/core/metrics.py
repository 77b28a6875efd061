"""Prometheus metrics: one registry per app, every name prefixed ``rbn_serve_``, labels from small fixed sets.

With ``--workers N`` (``service.http.workers``) every worker process keeps its values in a shared folder
(prometheus_client's multiprocess mode) and ``/metrics``, whichever worker answers it, sums them all:
counters and histograms over every worker that ever ran, live gauges over the workers alive now.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client import values as prometheus_values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from service.core.shipped import package_version

if TYPE_CHECKING:
    from service.core.answers import AbResult

log = logging.getLogger(__name__)

PREFIX = "rbn_serve"
CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SCORE_BUCKETS = (-2.0, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0)
NO_CORRUPTION = "none"
SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # where prometheus_client's multiprocess values live
LIVE_REFRESH_S = 1.0  # how often a worker publishes its live gauges to the shared folder


def share_between_processes(folder: Path) -> None:
    """Make every metric created from now on in this process keep its value in ``folder``, for the
    other workers' ``/metrics`` to read. Call once per worker process, before ``Metrics``."""
    os.environ[SHARED_DIR_ENV] = str(folder)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue()


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class Metrics:
    """Every metric of the service, registered in its own ``CollectorRegistry``.

    ``shared_dir``: this process is one of several workers (``share_between_processes`` was called);
    the exposition is then every worker's values summed. The process and GC collectors describe one
    process only, so a worker leaves them out rather than report whichever worker a scrape reached."""

    def __init__(self, shared_dir: Path | None = None) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition and nobody graphs them
        self.shared_dir = shared_dir
        self._gpu: _GpuCollector | None = None
        r = self.registry = CollectorRegistry()
        if shared_dir is None:
            ProcessCollector(registry=r)
            GCCollector(registry=r)
        PlatformCollector(registry=r)

        def name(n: str) -> str:
            return f"{PREFIX}_{n}"

        self.requests = Counter(name("requests"), "HTTP requests by route template, model and status class",
                                ["route", "model", "status"], registry=r)
        self.request_seconds = Histogram(name("request_duration_seconds"), "HTTP request latency, receipt to answer",
                                         ["route", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter(name("rejected_requests"), "Requests answered with an error, by route and reason",
                                ["route", "reason"], registry=r)
        self.queue_wait = Histogram(name("queue_wait_seconds"), "Time a request waited in the batch queue",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference_seconds = Histogram(name("inference_duration_seconds"), "ONNX Runtime time per batch",
                                           ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(name("batch_size"), "Images per executed batch", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.predictions = Counter(name("predictions"), "Predicted classes (top-1) per model", ["model", "label"], registry=r)
        self.ood_score = Histogram(name("ood_score"), "OOD score of each predicted image", ["model"],
                                   buckets=SCORE_BUCKETS, registry=r)
        self.ood_flagged = Counter(name("ood_flagged"), "Images whose OOD score exceeded the model's threshold",
                                   ["model"], registry=r)
        self.ab = Counter(name("ab_comparisons"), "A/B images compared, by pair, corruption and agreement",
                          ["model", "baseline", "corruption", "severity", "agree"], registry=r)
        self.ab_labelled = Counter(name("ab_labelled"), "A/B images that came with a label", ["model", "corruption", "severity"],
                                   registry=r)
        self.ab_correct = Counter(name("ab_correct"), "A/B labelled images an arm got right (arm: rbn | baseline)",
                                  ["model", "arm", "corruption", "severity"], registry=r)
        self.shadow = Counter(name("shadow_comparisons"), "Shadow images run on the baseline, by agreement",
                              ["model", "baseline", "agree"], registry=r)
        self.shadow_dropped = Counter(name("shadow_dropped"), "Shadow runs skipped (baseline queue full or failed)",
                                      ["model", "reason"], registry=r)
        # Across workers (multiprocess_mode, ignored in one process): the largest value among the live ones.
        self.model_info = Gauge(name("model_info"), "Loaded models (value 1)",
                                ["model", "version", "norm", "provider", "baseline"], registry=r, multiprocess_mode="livemax")
        self.bundle_errors = Gauge(name("bundle_errors"), "Bundles in the repository that are not served", registry=r,
                                   multiprocess_mode="livemax")
        # The usual *_build_info pattern: value 1, what is running in the labels (pyproject's version).
        self.build_info = Gauge(name("build_info"), "Version of rbn-serve, Python and ONNX Runtime (value 1)",
                                ["version", "python", "onnxruntime"], registry=r, multiprocess_mode="livemax")
        self.build_info.labels(package_version(), platform.python_version(), onnxruntime.__version__).set(1)
        self._request_children: dict[tuple[str, str, int], tuple] = {}
        self._prediction_children: dict[tuple[str, str], tuple] = {}

    # --- hot-path helpers (label children cached) ------------------------------------------
    def observe_request(self, route: str, model: str, status: int, seconds: float) -> None:
        key = (route, model, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.requests.labels(route, model, status_class(status)), self.request_seconds.labels(route, model))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_prediction(self, model: str, label: str, score: float | None, flagged: bool) -> None:
        key = (model, label)
        children = self._prediction_children.get(key)
        if children is None:
            children = (self.predictions.labels(model, label), self.ood_score.labels(model), self.ood_flagged.labels(model))
            self._prediction_children[key] = children
        children[0].inc()
        if score is not None:
            children[1].observe(score)
            if flagged:
                children[2].inc()

    def observe_ab(self, model: str, baseline: str, corruption: str, severity: int, results: list[AbResult]) -> None:
        """An /ab answer's ``results`` (``AbResult``): agreement, and per arm correctness when labelled."""
        severity_label = str(severity)
        for item in results:
            self.ab.labels(model, baseline, corruption, severity_label, str(item.agree).lower()).inc()
            if item.correct is not None:
                self.ab_labelled.labels(model, corruption, severity_label).inc()
                for arm, right in (("rbn", item.correct.rbn), ("baseline", item.correct.baseline)):
                    if right:
                        self.ab_correct.labels(model, arm, corruption, severity_label).inc()

    def batch_observer(self, model: str) -> Callable[[int, float, list[float]], None]:
        size, infer, wait = self.batch_size.labels(model), self.inference_seconds.labels(model), self.queue_wait.labels(model)

        def observe(images: int, infer_s: float, waits: list[float]) -> None:
            size.observe(images)
            infer.observe(infer_s)
            for w in waits:
                wait.observe(w)

        return observe

    def expose(self) -> bytes:
        if self.shared_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.shared_dir))
        PlatformCollector(registry=registry)
        if self._gpu is not None:  # per GPU, not per process: any worker's reading is the reading
            registry.register(self._gpu)
        return generate_latest(registry)

    def register_live(self, read: Callable[[], LiveState]) -> None:
        """Gauges read from ``read()``: at scrape time in one process; with workers, published by each
        worker every ``LIVE_REFRESH_S`` (a scrape reaches one worker and must see them all)."""
        if self.shared_dir is None:
            self.registry.register(_LiveCollector(read))
        else:
            self._live = _LiveGauges(read, self.registry)
            self._live.start()

    def live_changed(self) -> None:
        """Readiness changed: with workers, publish the live gauges now rather than at the next tick (a scrape
        right after /readyz turned 200 would otherwise read rbn_serve_ready 0 for up to LIVE_REFRESH_S)."""
        live = getattr(self, "_live", None)
        if live is not None:
            live.publish()

    def register_gpu(self) -> bool:
        """GPU utilisation and memory through NVML; False (and no metrics) when NVML is unavailable."""
        try:
            collector = _GpuCollector()
        except Exception as exc:  # nvidia-ml-py missing or no driver
            log.warning("GPU metrics off: %s", exc)
            return False
        self.registry.register(collector)
        self._gpu = collector
        return True


class LiveState:
    """Values read at scrape time, so the hot path pays nothing for them."""

    def __init__(self, ready: bool, in_flight: int, queues: dict[str, tuple[int, int]]) -> None:
        self.ready = ready
        self.in_flight = in_flight
        self.queues = queues  # model -> (images queued, batches running)

    def series(self) -> list[tuple[str, str, list[str], list[tuple[list[str], float]]]]:
        """Every live gauge: (name without prefix, help, label names, [(label values, value)])."""
        queues = self.queues.items()
        return [
            ("ready", "1 when models are loaded and warm and the server is not draining", [], [([], int(self.ready))]),
            ("requests_in_flight", "Requests being handled (HTTP requests and gRPC calls)", [], [([], self.in_flight)]),
            ("queue_depth", "Images waiting in the batch queue", ["model"], [([m], q) for m, (q, _) in queues]),
            ("batches_in_flight", "Batches running in ONNX Runtime", ["model"], [([m], b) for m, (_, b) in queues]),
        ]


class _LiveCollector:
    def __init__(self, read: Callable[[], LiveState]) -> None:
        self._read = read

    def describe(self):
        return []

    def collect(self):
        for name, doc, labels, values in self._read().series():
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            for label_values, value in values:
                family.add_metric(label_values, value)
            yield family


class _LiveGauges:
    """The live gauges of one worker, published from a daemon thread (so they stay current while the
    event loop is busy). Summed over the live workers, except ``ready``: the minimum, 1 only when every
    worker is ready."""

    def __init__(self, read: Callable[[], LiveState], registry: CollectorRegistry) -> None:
        self._read = read
        self._gauges = {
            name: Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry,
                        multiprocess_mode="livemin" if name == "ready" else "livesum")
            for name, doc, labels, _ in read().series()
        }

    def start(self) -> None:
        self.publish()
        threading.Thread(target=self._run, name="live-metrics", daemon=True).start()

    def publish(self) -> None:
        for name, _, _, values in self._read().series():
            gauge = self._gauges[name]
            for label_values, value in values:
                (gauge.labels(*label_values) if label_values else gauge).set(value)

    def _run(self) -> None:
        while True:
            time.sleep(LIVE_REFRESH_S)
            try:
                self.publish()
            except Exception:  # noqa: BLE001 - e.g. the models dict changing while read: next tick
                log.debug("live metrics not published this tick", exc_info=True)


class _GpuCollector:
    """NVML readings are per GPU, not per process: replicas sharing a GPU all report the same figures.
    ``uuid`` names the GPU across replicas, containers and hosts (``gpu``, the index this process sees,
    is 0 in every single-GPU container), so dashboards and alerts aggregate ``by (uuid)``."""

    def __init__(self) -> None:
        import pynvml  # nvidia-ml-py, only with the gpu extra

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        self._labels = [[str(i), _text(pynvml.nvmlDeviceGetUUID(h))] for i, h in enumerate(self._handles)]

    def describe(self):
        return []

    def collect(self):
        nvml = self._nvml
        labels = ["gpu", "uuid"]
        util = GaugeMetricFamily(f"{PREFIX}_gpu_utilization_ratio",
                                 "GPU busy fraction over the last sample period (the whole GPU, every process)",
                                 labels=labels)
        used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use (the whole GPU, every process)",
                                 labels=labels)
        total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory size", labels=labels)
        for handle, values in zip(self._handles, self._labels, strict=True):
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            except nvml.NVMLError:
                continue
            util.add_metric(values, rates.gpu / 100.0)
            used.add_metric(values, memory.used)
            total.add_metric(values, memory.total)
        yield util
        yield used
        yield total


def _text(value: str | bytes) -> str:
    """nvidia-ml-py returns str; releases before 11.5 returned bytes."""
    return value.decode() if isinstance(value, bytes) else value
