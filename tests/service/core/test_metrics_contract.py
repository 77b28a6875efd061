"""The metric contract as served, read back from ``Metrics.expose()`` (the bytes /metrics answers):

- every ``rbn_serve_`` metric the service can expose is the one docs/metrics.md lists, with its type and label
  names, and its HELP text is the start of the docs' "meaning" cell (what a Grafana tooltip shows is what the
  docs say), and nothing undocumented is exposed;
- the live gauges (ready, in flight, queue depth, batches) carry the values of the ``LiveState`` they read;
- with ``--workers`` (prometheus_client's multiprocess mode): counters summed over the workers, the info gauges
  one series at their largest value, ``ready`` the smallest over the workers (1 only when every one is), the
  other live gauges summed, the per-process collectors left out, and each worker's live gauges published at
  once on a readiness change and every ``LIVE_REFRESH_S`` after;
- the GPU gauges (NVML readings turned into a ratio and bytes, labelled by index and UUID).

NVML needs an NVIDIA driver, which this machine does not have, so the GPU tests give the collector a stand-in
``pynvml`` module with nvidia-ml-py's calls and result fields (``nvmlDeviceGetUtilizationRates(h).gpu`` in
percent, ``nvmlDeviceGetMemoryInfo(h).used``/``.total`` in bytes, ``NVMLError``); what they check is the
service's side: the conversion, the labels, the GPU skipped when its reading fails, NVML missing or failing
turning GPU metrics off. The "workers" here are two value stores in this process, the second under another
process id: the folder and the files are the ones real workers share."""

from __future__ import annotations

import logging
import os
import platform
import re
import sys
import threading
import time
import tomllib
import types
from pathlib import Path

import onnxruntime
import pytest
from prometheus_client import values as prometheus_values
from prometheus_client.parser import text_string_to_metric_families

from service.core import metrics as metrics_module
from service.core.metrics import SHARED_DIR_ENV, LiveState, Metrics, share_between_processes

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "metrics.md"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
UUID0 = "GPU-8f6b2a40-1c3e-4d2b-9a7f-0e5d6c4b3a21"
UUID1 = "GPU-11111111-2222-3333-4444-555555555555"


# --- docs/metrics.md, the reference ----------------------------------------------------------------------
def documented() -> dict[str, tuple[str, set[str], str]]:
    """name -> (type, label names, meaning as plain text) from the docs' table."""
    rows = {}
    for line in DOCS.read_text().splitlines():
        if not line.startswith("| `rbn_serve_"):
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        name, kind, labels, meaning = cells
        rows[name.strip("`")] = (kind.split()[0], set(re.findall(r"`([^`]+)`", labels)),
                                 meaning.replace("`", "").replace("\\|", "|"))
    return rows


def test_the_docs_table_lists_what_the_service_defines():
    rows = documented()
    assert len(rows) == 24
    assert rows["rbn_serve_ab_correct_total"] == ("counter", {"model", "arm", "corruption", "severity"},
                                                  "A/B labelled images an arm got right (arm: rbn | baseline)")


# --- a stand-in for nvidia-ml-py (no NVIDIA driver on this machine) ---------------------------------------
class NVMLError(Exception):
    pass


def stand_in_nvml(devices: list[dict], init_error: Exception | None = None) -> types.ModuleType:
    """``devices``: per GPU its uuid (str, or bytes as nvidia-ml-py before 11.5 returned), utilisation in
    percent and memory used/total in bytes, or ``fail`` for a GPU whose readings raise NVMLError."""
    nvml = types.ModuleType("pynvml")
    nvml.NVMLError = NVMLError
    calls = nvml.calls = []

    def init():
        calls.append("init")
        if init_error is not None:
            raise init_error

    def reading(kind):
        def read(handle):
            device = devices[handle.index]
            if device.get("fail"):
                raise NVMLError("GPU is lost")
            if kind == "util":
                return types.SimpleNamespace(gpu=device["util"], memory=0)
            return types.SimpleNamespace(used=device["used"], total=device["total"], free=device["total"] - device["used"])
        return read

    nvml.nvmlInit = init
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: types.SimpleNamespace(index=i)
    nvml.nvmlDeviceGetUUID = lambda handle: devices[handle.index]["uuid"]
    nvml.nvmlDeviceGetUtilizationRates = reading("util")
    nvml.nvmlDeviceGetMemoryInfo = reading("memory")
    return nvml


TWO_GPUS = [{"uuid": UUID0, "util": 37, "used": 1_500_000_000, "total": 80 * 2**30},
            {"uuid": UUID1.encode(), "util": 100, "used": 0, "total": 16 * 2**30}]


# --- reading an exposition ----------------------------------------------------------------------------------
def helps_and_types(text: str) -> tuple[dict[str, str], dict[str, str]]:
    helps = dict(re.findall(r"^# HELP (rbn_serve_\S+) (.*)$", text, re.M))
    kinds = dict(re.findall(r"^# TYPE (rbn_serve_\S+) (\S+)$", text, re.M))
    return helps, kinds


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of that exact series name, in the text the service exposed (the Python client's parser)."""
    return [(s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples
            if s.name == name]


def one(text: str, name: str, **labels: str) -> float:
    found = [v for got, v in samples(text, name) if got == labels]
    assert len(found) == 1, (name, labels, samples(text, name))
    return found[0]


def fill(m: Metrics) -> None:
    """One sample in every labelled metric of ``Metrics``."""
    m.observe_request("/predict", "m", 200, 0.01)
    m.rejected.labels("/predict", "queue_full").inc()
    m.batch_observer("m")(2, 0.01, [0.001])
    m.observe_prediction("m", "Bag", 1.0, True)
    m.ab.labels("m", "b", "none", "0", "true").inc()
    m.ab_labelled.labels("m", "none", "0").inc()
    m.ab_correct.labels("m", "rbn", "none", "0").inc()
    m.shadow.labels("m", "b", "true").inc()
    m.shadow_dropped.labels("m", "backlog").inc()
    m.model_info.labels("m", "1", "rbn", "CPUExecutionProvider", "b").set(1)


@pytest.fixture
def with_gpus(monkeypatch):
    nvml = stand_in_nvml(TWO_GPUS)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    return nvml


@pytest.fixture
def everything(with_gpus) -> str:
    """A single-process exposition with every metric in it: live gauges and GPU gauges included."""
    m = Metrics()
    m.register_live(lambda: LiveState(True, 2, {"m": (3, 1)}))
    assert m.register_gpu() is True
    fill(m)
    return m.expose().decode()


def test_every_exposed_metric_is_documented_with_its_help_type_and_labels(everything):
    rows = documented()
    helps, kinds = helps_and_types(everything)
    assert set(helps) == set(kinds) == set(rows)  # nothing undocumented, nothing documented but missing
    families = {f.name: f for f in text_string_to_metric_families(everything)}
    for name, (kind, labels, meaning) in rows.items():
        assert kinds[name] == kind, name
        assert meaning.startswith(helps[name]), (name, helps[name], meaning)
        rest = meaning[len(helps[name]):]
        assert rest == "" or rest[0] in " :", (name, rest)  # the whole HELP text, then the docs' detail
        family = families[name.removesuffix("_total")]
        assert family.samples, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)


def test_the_process_and_python_series_come_along_in_one_process():
    text = Metrics().expose().decode()
    assert "# TYPE process_cpu_seconds_total counter" in text
    assert "# TYPE python_gc_collections_total counter" in text
    assert one(text, "python_info", implementation=platform.python_implementation(), major=str(sys.version_info.major),
               minor=str(sys.version_info.minor), patchlevel=str(sys.version_info.micro), version=platform.python_version()) == 1


def test_build_info_names_what_is_running():
    text = Metrics().expose().decode()
    assert samples(text, "rbn_serve_build_info") == [
        ({"version": VERSION, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}, 1.0)]


# --- live gauges, one process ------------------------------------------------------------------------------
@pytest.mark.parametrize(("ready", "value"), [(True, 1.0), (False, 0.0)])
def test_the_live_gauges_read_the_state_at_scrape_time(ready, value):
    state = {"now": LiveState(ready, 4, {"a": (7, 2), "b": (0, 1)})}
    m = Metrics()
    m.register_live(lambda: state["now"])
    text = m.expose().decode()
    assert one(text, "rbn_serve_ready") == value
    assert one(text, "rbn_serve_requests_in_flight") == 4
    assert one(text, "rbn_serve_queue_depth", model="a") == 7 and one(text, "rbn_serve_queue_depth", model="b") == 0
    assert one(text, "rbn_serve_batches_in_flight", model="a") == 2 and one(text, "rbn_serve_batches_in_flight", model="b") == 1
    state["now"] = LiveState(not ready, 0, {"a": (1, 0)})  # read again at the next scrape, nothing cached
    text = m.expose().decode()
    assert one(text, "rbn_serve_ready") == 1.0 - value
    assert one(text, "rbn_serve_requests_in_flight") == 0
    assert samples(text, "rbn_serve_queue_depth") == [({"model": "a"}, 1.0)]
    m.live_changed()  # one process: nothing is published, the next scrape reads the state


def test_live_state_series_by_hand():
    assert LiveState(True, 3, {"m": (5, 2)}).series() == [
        ("ready", "1 when models are loaded and warm and the server is not draining", [], [([], 1)]),
        ("requests_in_flight", "Requests being handled (HTTP requests and gRPC calls)", [], [([], 3)]),
        ("queue_depth", "Images waiting in the batch queue", ["model"], [(["m"], 5)]),
        ("batches_in_flight", "Batches running in ONNX Runtime", ["model"], [(["m"], 2)]),
    ]


# --- GPU gauges --------------------------------------------------------------------------------------------
def test_gpu_readings_become_a_ratio_and_bytes_labelled_by_index_and_uuid(everything):
    assert samples(everything, "rbn_serve_gpu_utilization_ratio") == [({"gpu": "0", "uuid": UUID0}, 0.37),
                                                                      ({"gpu": "1", "uuid": UUID1}, 1.0)]
    assert samples(everything, "rbn_serve_gpu_memory_used_bytes") == [({"gpu": "0", "uuid": UUID0}, 1_500_000_000),
                                                                      ({"gpu": "1", "uuid": UUID1}, 0)]
    assert samples(everything, "rbn_serve_gpu_memory_total_bytes") == [({"gpu": "0", "uuid": UUID0}, 80 * 2**30),
                                                                       ({"gpu": "1", "uuid": UUID1}, 16 * 2**30)]


def test_a_gpu_whose_reading_fails_is_left_out_of_that_scrape(monkeypatch):
    devices = [dict(TWO_GPUS[0], fail=True), dict(TWO_GPUS[1])]
    monkeypatch.setitem(sys.modules, "pynvml", stand_in_nvml(devices))
    m = Metrics()
    assert m.register_gpu() is True
    text = m.expose().decode()
    for name in ("rbn_serve_gpu_utilization_ratio", "rbn_serve_gpu_memory_used_bytes", "rbn_serve_gpu_memory_total_bytes"):
        assert [labels for labels, _ in samples(text, name)] == [{"gpu": "1", "uuid": UUID1}], name
    devices[0]["fail"] = False  # read again at every scrape
    devices[1]["fail"] = True
    text = m.expose().decode()
    assert samples(text, "rbn_serve_gpu_utilization_ratio") == [({"gpu": "0", "uuid": UUID0}, 0.37)]
    devices[0]["fail"] = True
    text = m.expose().decode()  # no GPU readable: the families are still declared, without samples
    assert "# TYPE rbn_serve_gpu_memory_total_bytes gauge" in text
    assert samples(text, "rbn_serve_gpu_memory_total_bytes") == []


@pytest.mark.parametrize("nvml", ["missing", "no driver"])
def test_without_nvml_there_are_no_gpu_metrics_and_a_warning(monkeypatch, caplog, nvml):
    if nvml == "missing":
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
        reason = "import of pynvml halted"
    else:
        monkeypatch.setitem(sys.modules, "pynvml", stand_in_nvml(TWO_GPUS, init_error=NVMLError("Driver Not Loaded")))
        reason = "Driver Not Loaded"
    m = Metrics()
    with caplog.at_level(logging.WARNING, logger="service.core.metrics"):
        assert m.register_gpu() is False
    warned = [r.getMessage() for r in caplog.records if r.name == "service.core.metrics" and r.levelno == logging.WARNING]
    assert len(warned) == 1 and warned[0].startswith(f"GPU metrics off: {reason}"), warned
    assert "rbn_serve_gpu" not in m.expose().decode()


# --- several workers (prometheus_client's multiprocess mode) ------------------------------------------------
OTHER_PID = 4_000_001  # no real process has it: the second worker's files


@pytest.fixture
def shared(tmp_path, monkeypatch):
    """This process as a worker of a shared folder; ValueClass and the environment restored afterwards."""
    monkeypatch.setattr(prometheus_values, "ValueClass", prometheus_values.ValueClass)
    monkeypatch.delenv(SHARED_DIR_ENV, raising=False)
    share_between_processes(tmp_path)
    assert os.environ[SHARED_DIR_ENV] == str(tmp_path)
    assert prometheus_values.ValueClass is not None
    return tmp_path


def as_other_worker(make):
    """Run ``make()`` with the values kept under OTHER_PID's files, then back to this process's store."""
    mine = prometheus_values.ValueClass
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(process_identifier=lambda: OTHER_PID)
    try:
        return make()
    finally:
        prometheus_values.ValueClass = mine


class Live:
    """A worker's live state, changed by the test."""

    def __init__(self, ready: bool, in_flight: int, queues: dict[str, tuple[int, int]]) -> None:
        self.state = LiveState(ready, in_flight, queues)
        self.fail = 0

    def __call__(self) -> LiveState:
        if self.fail:
            self.fail -= 1
            raise RuntimeError("models changed while read")
        return self.state


def test_counters_and_histograms_are_summed_over_the_workers(shared):
    a = Metrics(shared_dir=shared)
    a.observe_request("/predict", "m", 200, 0.003)

    def other():
        b = Metrics(shared_dir=shared)
        b.observe_request("/predict", "m", 200, 0.2)
        b.observe_request("/predict", "m", 503, 0.004)
        return b

    b = as_other_worker(other)
    for m in (a, b):  # whichever worker answers the scrape
        text = m.expose().decode()
        assert one(text, "rbn_serve_requests_total", route="/predict", model="m", status="2xx") == 2
        assert one(text, "rbn_serve_requests_total", route="/predict", model="m", status="5xx") == 1
        assert one(text, "rbn_serve_request_duration_seconds_count", route="/predict", model="m") == 3
        assert one(text, "rbn_serve_request_duration_seconds_bucket", route="/predict", model="m", le="0.005") == 2
        assert "process_cpu_seconds_total" not in text and "python_gc_" not in text  # one process's: left out
        assert one(text, "python_info", implementation=platform.python_implementation(), major=str(sys.version_info.major),
                   minor=str(sys.version_info.minor), patchlevel=str(sys.version_info.micro),
                   version=platform.python_version()) == 1
        assert "rbn_serve_gpu" not in text


def test_info_gauges_are_one_series_at_their_largest_value(shared):
    a = Metrics(shared_dir=shared)
    a.bundle_errors.set(2)
    a.model_info.labels("m", "1", "rbn", "CPUExecutionProvider", "b").set(1)

    def other():
        b = Metrics(shared_dir=shared)
        b.bundle_errors.set(3)
        b.model_info.labels("m", "1", "rbn", "CPUExecutionProvider", "b").set(1)
        return b

    as_other_worker(other)
    text = a.expose().decode()
    assert samples(text, "rbn_serve_bundle_errors") == [({}, 3.0)]  # no pid label, not 5
    assert samples(text, "rbn_serve_model_info") == [
        ({"model": "m", "version": "1", "norm": "rbn", "provider": "CPUExecutionProvider", "baseline": "b"}, 1.0)]
    assert samples(text, "rbn_serve_build_info") == [
        ({"version": VERSION, "python": platform.python_version(), "onnxruntime": onnxruntime.__version__}, 1.0)]


def test_live_gauges_over_workers_ready_is_the_smallest_the_rest_summed(shared):
    a, live_a = Metrics(shared_dir=shared), Live(True, 2, {"m": (1, 0)})
    a.register_live(live_a)
    live_b = Live(False, 3, {"m": (4, 1)})
    b = as_other_worker(lambda: Metrics(shared_dir=shared))
    as_other_worker(lambda: b.register_live(live_b))
    text = a.expose().decode()
    assert one(text, "rbn_serve_ready") == 0  # one worker not ready yet
    assert one(text, "rbn_serve_requests_in_flight") == 5
    assert one(text, "rbn_serve_queue_depth", model="m") == 5
    assert one(text, "rbn_serve_batches_in_flight", model="m") == 1
    live_b.state = LiveState(True, 3, {"m": (4, 1)})
    b.live_changed()  # published now, not at the next tick
    assert one(a.expose().decode(), "rbn_serve_ready") == 1


def test_a_worker_publishes_its_live_gauges_every_tick_and_survives_a_failed_read(shared, monkeypatch, caplog):
    monkeypatch.setattr(metrics_module, "LIVE_REFRESH_S", 0.05)
    before = {t for t in threading.enumerate() if t.name == "live-metrics"}
    a, live = Metrics(shared_dir=shared), Live(True, 1, {})
    with caplog.at_level(logging.DEBUG, logger="service.core.metrics"):
        a.register_live(live)
        started = [t for t in threading.enumerate() if t.name == "live-metrics" and t not in before]
        assert len(started) == 1 and started[0].daemon  # never keeps the process from exiting
        assert one(a.expose().decode(), "rbn_serve_requests_in_flight") == 1  # published at start
        live.fail = 1  # the next read fails: that tick is skipped, the next ones publish
        live.state = LiveState(True, 6, {})
        deadline = time.monotonic() + 20
        while one(a.expose().decode(), "rbn_serve_requests_in_flight") != 6:
            assert time.monotonic() < deadline, "the live gauges were not published again"
            time.sleep(0.02)
    assert live.fail == 0
    failed = [r for r in caplog.records if r.getMessage() == "live metrics not published this tick"]
    assert failed and failed[0].levelno == logging.DEBUG
    assert failed[0].exc_info and failed[0].exc_info[0] is RuntimeError  # with its traceback
    assert started[0].is_alive()


def test_a_worker_reads_the_folder_it_was_given_whatever_the_environment_says_later(shared, tmp_path_factory, monkeypatch):
    a = Metrics(shared_dir=shared)
    a.observe_request("/predict", "m", 200, 0.003)
    monkeypatch.setenv(SHARED_DIR_ENV, str(tmp_path_factory.mktemp("elsewhere")))
    assert one(a.expose().decode(), "rbn_serve_requests_total", route="/predict", model="m", status="2xx") == 1


def test_a_worker_exposes_the_gpu_gauges_too(shared, with_gpus):
    a = Metrics(shared_dir=shared)
    assert a.register_gpu() is True
    text = a.expose().decode()
    assert samples(text, "rbn_serve_gpu_utilization_ratio") == [({"gpu": "0", "uuid": UUID0}, 0.37),
                                                                ({"gpu": "1", "uuid": UUID1}, 1.0)]
