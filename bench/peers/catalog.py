"""The servers compared: how each starts, what it is sent, and the settings tried (with why).

A peer's ``settings`` are tried in the tuning stage of bench/peers/run.py and the best one (highest
geometric mean of req/s at the tuning concurrencies) goes into the measured rounds. Settings are sized
for the 2-core machine BENCHMARKS.md reports from; each says why it is worth trying. ONNX Runtime threads
per session: the service's default (``service.core.runtime.default_threads``: 2 on 2 cores) unless a setting
runs two processes, which then take one each so that the machine is not oversubscribed.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENTO_SERVICE = "bench.peers.bentoml_service:RbnClassifier"


@dataclass(frozen=True)
class Setting:
    """One configuration of a server: extra command-line flags and environment, and why it is tried."""

    name: str
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    why: str = ""


@dataclass(frozen=True)
class Peer:
    """A server: its venv (None: the project's own interpreter), request framing (bench/peers/framing.py),
    the path POSTed to, the GET path that answers 200 when ready, and the settings to try."""

    name: str
    venv: str | None
    framing: str
    path: str
    ready_path: str
    settings: tuple[Setting, ...]
    docs: str  # what its documentation recommends, that these settings follow

    def command(self, python: Path, port: int, setting: Setting, repository: Path, gpu: bool) -> list[str]:
        """The argv that starts it on 127.0.0.1:``port`` (``python``: the venv's interpreter)."""
        if self.name == "rbn-serve":
            return [sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repository),
                    "--host", "127.0.0.1", "--port", str(port), "--providers", "cuda" if gpu else "cpu",
                    "--log-level", "warning", *setting.args]
        if self.name == "bentoml":
            return [str(python.parent / "bentoml"), "serve", BENTO_SERVICE, "--host", "127.0.0.1", "--port", str(port)]
        script = str(ROOT / "bench" / "peers" / f"{self.name}_server.py")
        if self.name == "kserve":
            return [str(python), script, "--http_port", str(port), "--configure_logging", "false", *setting.args]
        extra = ["--gpus-per-replica", "1"] if gpu and self.name == "ray" else []
        return [str(python), script, "--port", str(port), *setting.args, *extra]


ONE_THREAD = {"PEER_INTRA_OP_THREADS": "1"}

PEERS: dict[str, Peer] = {p.name: p for p in (
    Peer("rbn-serve", None, "raw", "/predict", "/readyz", (
        Setting("defaults", why="as shipped: batches of up to 32, 2 ms queue delay, 2 ONNX Runtime threads (1 for a lone image)"),
        Setting("2 workers", ("--workers", "2"),
                why="one process per core (README: `--workers`), each with its own batcher and 1 ONNX Runtime "
                    "thread (its share of the CPUs): HTTP work on both cores, as KServe's --workers"),
    ), docs="README: `rbn-serve serve`; its own dynamic batcher, one process or `--workers` processes on one port"),
    Peer("bentoml", "bentoml", "multipart", "/predict", "/readyz", (
        Setting("1 worker, batch 32, 1 s SLO", env={"PEER_WORKERS": "1", "PEER_MAX_BATCH_SIZE": "32",
                                                    "PEER_MAX_LATENCY_MS": "1000"},
                why="one process holds the whole batch; BentoML answers 503 to requests its latency model expects "
                    "to miss max_latency_ms, which a 20 ms SLO did here at concurrency 16, so 1 s"),
        Setting("1 worker, batch 64, 60 s SLO", env={"PEER_WORKERS": "1", "PEER_MAX_BATCH_SIZE": "64",
                                                     "PEER_MAX_LATENCY_MS": "60000"},
                why="BentoML's default SLO (60 s: never sheds) and larger batches for concurrency 64"),
        Setting("2 workers, batch 32, 1 s SLO", env={"PEER_WORKERS": "2", "PEER_MAX_BATCH_SIZE": "32",
                                                     "PEER_MAX_LATENCY_MS": "1000", **ONE_THREAD},
                why="BentoML's guide sizes workers to the CPU count (2 here); 1 ORT thread each"),
    ), docs="BentoML 1.4 adaptive batching guide: `@bentoml.api(batchable=True, max_batch_size, max_latency_ms)`, "
            "workers per CPU"),
    Peer("ray", "ray", "raw", "/predict", "/-/healthz", (
        Setting("1 replica, batch 32, wait 5 ms", ("--max-batch-size", "32", "--batch-wait-ms", "5"),
                why="Ray's batching guide: max_batch_size with a short batch_wait_timeout_s; "
                    "max_ongoing_requests 128 so batches can fill"),
        Setting("1 replica, batch 32, wait 1 ms", ("--max-batch-size", "32", "--batch-wait-ms", "1"),
                why="shorter wait: less idle time at low concurrency"),
        Setting("2 replicas, batch 32, wait 5 ms", ("--replicas", "2", "--max-batch-size", "32", "--batch-wait-ms", "5"),
                env=ONE_THREAD, why="one replica per core, 1 ORT thread each (Ray's guide: scale replicas)"),
    ), docs="Ray Serve dynamic request batching and performance guides: `@serve.batch`, max_ongoing_requests, replicas"),
    Peer("kserve", "kserve", "b64json", "/v1/models/rbn:predict", "/v1/models/rbn", (
        Setting("1 worker", ("--workers", "1"),
                why="KServe's default: one uvicorn process; a synchronous predict runs on its event loop (kserve/model.py calls it directly)"),
        Setting("2 workers", ("--workers", "2", "--intra-op-threads", "1"),
                why="KServe's --workers for CPU-bound models: one process per core, 1 ORT thread each"),
    ), docs="KServe custom Python model server docs: `kserve.Model` + `ModelServer`, `--workers`; no in-process batching"),
    Peer("pytriton", "pytriton", "oip", "/v2/models/rbn/infer", "/v2/health/ready", (
        Setting("batch 32, delay 2 ms", ("--max-batch-size", "32", "--queue-delay-us", "2000"),
                why="Triton's dynamic batcher with a small max_queue_delay (the same delay as rbn-serve)"),
        Setting("batch 32, delay 0", ("--max-batch-size", "32", "--queue-delay-us", "0"),
                why="Triton's recommended starting point: `dynamic_batching {}` with no delay"),
        Setting("batch 32, delay 2 ms, 2 instances", ("--max-batch-size", "32", "--queue-delay-us", "2000",
                                                      "--instances", "2"), env=ONE_THREAD,
                why="two model instances (PyTriton binds one infer function per instance), 1 ORT thread each"),
    ), docs="PyTriton binding configuration: `ModelConfig(max_batch_size, batcher=DynamicBatcher(...))`, "
            "`@batch`, several infer functions for instances"),
)}
