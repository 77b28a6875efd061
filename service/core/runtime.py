"""One ONNX Runtime session per model: providers, the graph/metadata check, warm-up, run."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from rbn.contract.bundle import BundleError, BundleMeta, graph_outputs

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# A batch size counts as fast as the fastest when its time per image is within 10% of it (timing noise).
BATCH_TOLERANCE = 1.10


class ProviderError(RuntimeError):
    """The requested execution provider is not what the session runs on."""


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads(cpus: int | None = None) -> int:
    """Every core on one or two, else leave one core to the HTTP event loop; at most 8.

    On the 2-core VM (bench/service_variants.py, shipped models, idle-thread spinning off) 2
    threads against 1 gave 8% more throughput at concurrency 16 and 24% more at 64, but 20% less
    at 4 (BENCHMARKS.md): the event loop needs about 0.4 of a core, a second ORT thread uses the rest.
    Tiny models gain nothing past 8.
    """
    cpus = available_cpus() if cpus is None else cpus
    return max(1, min(8, cpus if cpus <= 2 else cpus - 1))


# docker/check_gpu_libs.py --register writes this in the GPU image: there the loader finds CUDA and cuDNN.
IMAGE_LD_CONF = Path("/etc/ld.so.conf.d/rbn-serve-nvidia.conf")


@dataclass(frozen=True)
class CudaOptions:
    """The CUDA provider's options (service.core.config.Settings' cuda_* fields)."""

    device: int = 0
    conv_algo_search: str = "HEURISTIC"
    """cuDNN's convolution algorithm choice: HEURISTIC (cuDNN's guess, no timing), EXHAUSTIVE (time every
    algorithm for every new input shape: warm-up then benchmarks each batch size, seconds per shape on a
    large model), or DEFAULT (the first algorithm)."""
    mem_limit_bytes: int = 0
    """The arena's limit per session (0: none). Every model, --instances and --workers holds its own session."""
    arena_extend_strategy: str = "kNextPowerOfTwo"
    """How the arena grows: kNextPowerOfTwo (ONNX Runtime's default, fewer allocations) or kSameAsRequested
    (no rounding up: less memory held by each of several sessions on one GPU)."""
    preload_dlls: str = "auto"
    """auto | always | never: onnxruntime.preload_dlls() before the first CUDA session, which loads CUDA and cuDNN
    from pip's nvidia-* wheels (`pip install .[gpu]` outside the image has no library path to them); auto: unless
    the image registered them with the loader."""

    @classmethod
    def from_settings(cls, settings) -> CudaOptions:
        return cls(settings.cuda_device, settings.cuda_conv_algo_search, settings.cuda_mem_limit_bytes,
                   settings.cuda_arena_extend_strategy, settings.cuda_preload_dlls)


def cuda_provider_options(cuda: int | CudaOptions = 0) -> dict[str, str]:
    """The CUDA provider's option dictionary (also what bench/gpu_bench.py measures with)."""
    if isinstance(cuda, int):
        cuda = CudaOptions(device=cuda)
    options = {"device_id": str(cuda.device), "cudnn_conv_algo_search": cuda.conv_algo_search,
               "arena_extend_strategy": cuda.arena_extend_strategy}
    if cuda.mem_limit_bytes:
        options["gpu_mem_limit"] = str(cuda.mem_limit_bytes)
    return options


def should_preload(setting: str, image_conf: Path = IMAGE_LD_CONF) -> bool:
    """Whether to call onnxruntime.preload_dlls() before a CUDA session (see CudaOptions.preload_dlls)."""
    return setting == "always" or (setting == "auto" and not image_conf.exists())


_preloaded = False


def preload_cuda_libraries(setting: str) -> None:
    """onnxruntime.preload_dlls() once per process where ``setting`` asks for it; a failure is only logged (the
    session that follows says whether CUDA works)."""
    global _preloaded
    if _preloaded or not should_preload(setting) or not hasattr(ort, "preload_dlls"):
        return
    _preloaded = True
    try:
        ort.preload_dlls()
    except Exception as exc:  # a missing library: the CUDA session reports what it lacks
        log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def provider_list(providers: str, cuda: int | CudaOptions = 0) -> list:
    """What to ask ONNX Runtime for under the ``providers`` setting (auto | cuda | cpu); ``cuda`` is the device
    index or the CUDA provider's options."""
    available = ort.get_available_providers()
    options = cuda if isinstance(cuda, CudaOptions) else CudaOptions(device=cuda)
    entry = (CUDA, cuda_provider_options(options))
    if providers == "cpu":
        return [CPU]
    if providers == "cuda":
        if CUDA not in available:
            raise ProviderError(
                f"providers=cuda but this onnxruntime build offers {available}; install onnxruntime-gpu "
                "with a matching CUDA, or set providers=cpu"
            )
        preload_cuda_libraries(options.preload_dlls)
        return [entry, CPU]
    if CUDA in available:
        preload_cuda_libraries(options.preload_dlls)
        return [entry, CPU]
    return [CPU]


def session_options(intra_op_threads: int = 0) -> ort.SessionOptions:
    """The session options of every model (also what bench/gpu_bench.py measures with)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads or default_threads()
    options.inter_op_num_threads = 1
    # Idle ONNX Runtime threads must not spin on the cores the HTTP loop needs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


class ModelRuntime:
    """An ONNX Runtime session for one bundle. ``run`` is thread-safe and blocks: call it off the event loop."""

    def __init__(self, meta: BundleMeta, onnx_file: str | os.PathLike, providers: str = "auto",
                 intra_op_threads: int = 0, cuda: int | CudaOptions = 0) -> None:
        self.meta = meta
        options = session_options(intra_op_threads)
        self.session = _load(meta, onnx_file, options, provider_list(providers, cuda))
        self.providers = self.session.get_providers()
        if providers == "cuda" and CUDA not in self.providers:
            raise ProviderError(f"{meta.name}: providers=cuda but the session runs on {self.providers}")
        if providers == "auto" and CUDA in ort.get_available_providers() and CUDA not in self.providers:
            log.warning("%s: CUDA is available but the session fell back to %s", meta.name, self.providers)
        self.provider = "cuda" if self.providers[0] == CUDA else "cpu"
        check_io(self.session, meta)
        self.input_name = meta.input.name
        self.output_names = list(graph_outputs(meta))
        # A batch of one image on a small graph runs faster on one thread than split across several:
        # each parallel section wakes the other (sleeping, non-spinning) threads for a few microseconds
        # of work. A second, one-thread session takes single images when warm_up measures it faster.
        self.intra_op_threads = options.intra_op_num_threads
        self._single: ort.InferenceSession | None = None
        if self.provider == "cpu" and self.intra_op_threads > 1:
            self._single = _load(meta, onnx_file, session_options(1), [CPU])

    @property
    def single_image_threads(self) -> int | None:
        """ORT threads a batch of one image runs on, when that differs from larger batches."""
        return 1 if self._single is not None else None

    def run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(N, C, H, W) float32 -> the graph's outputs in ``output_names`` order: logits (N, K),
        rbn_stats (N, L), then rbn_channel_stats (N, sum C) and ood_score (N, 1) where the bundle has them."""
        single = self._single  # read once: warm_up may drop it while another thread runs
        session = single if len(x) == 1 and single is not None else self.session
        return tuple(session.run(self.output_names, {self.input_name: x}))

    def warm_up(self, max_batch_size: int) -> float:
        """Run every batch size 1..max_batch_size once (allocations, kernels, cuDNN searches); seconds taken."""
        zeros = self._zeros(max_batch_size)
        start = time.perf_counter()
        for n in range(1, max_batch_size + 1):
            try:
                outputs = self.run(zeros[:n])
            except Exception as exc:  # a graph that fails at some batch size, CUDA out of memory
                first = str(exc).partition("\n")[0]
                raise BundleError(f"{self.meta.name}: warm-up with a batch of {n} failed: {first}") from None
            shapes = [o.shape for o in outputs]
            if shapes != [(n, *dims) for dims in graph_outputs(self.meta).values()]:
                raise BundleError(f"{self.meta.name}: batch of {n} gave outputs of shapes {shapes}")
        if self._single is not None:
            self._keep_single_if_faster(zeros[:1])
        return time.perf_counter() - start

    def fastest_batch(self, max_batch_size: int, rounds: int = 3, tolerance: float = BATCH_TOLERANCE
                      ) -> tuple[int, dict[int, float]]:
        """The batch cap with the most images per second, and the per-image milliseconds it was chosen from: each
        of 1, 2, 4, ... and ``max_batch_size`` timed ``rounds`` times, interleaved; its fastest run counts (another
        job on the machine only ever slows a run down). The largest size within ``tolerance`` of the fastest
        per-image time wins: a larger batch also spreads the batcher's own work."""
        zeros = self._zeros(max_batch_size)
        sizes = batch_candidates(max_batch_size)
        timings: dict[int, list[float]] = {n: [] for n in sizes}
        for _ in range(rounds):
            for n in sizes:
                started = time.perf_counter()
                self.run(zeros[:n])
                timings[n].append((time.perf_counter() - started) / n)
        per_image = {n: min(t) * 1e3 for n, t in timings.items()}
        best = min(per_image.values())
        return max(n for n, ms in per_image.items() if ms <= best * tolerance), per_image

    def _zeros(self, images: int) -> np.ndarray:
        """A float32 batch of ``images`` blank inputs in this model's shape (warm-up and timing runs)."""
        spec = self.meta.input
        return np.zeros((images, spec.channels, spec.height, spec.width), np.float32)

    def _keep_single_if_faster(self, one: np.ndarray, rounds: int = 9) -> None:
        """Time one image on both sessions, interleaved; drop the one-thread session unless its median wins."""
        feeds = {self.input_name: one}
        timings: dict[str, list[float]] = {"single": [], "shared": []}
        for _ in range(rounds):
            for name, session in (("single", self._single), ("shared", self.session)):
                started = time.perf_counter()
                session.run(self.output_names, feeds)
                timings[name].append(time.perf_counter() - started)
        single, shared = (float(np.median(timings[k])) * 1e3 for k in ("single", "shared"))
        if single >= shared:
            self._single = None
        log.info("%s: one image takes %.3f ms on 1 thread, %.3f ms on %d; single images run on %s",
                 self.meta.name, single, shared, self.intra_op_threads,
                 "1 thread" if self._single is not None else "the shared session")


def batch_candidates(max_batch_size: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch_size``, then ``max_batch_size`` itself."""
    sizes = [1 << k for k in range(max_batch_size.bit_length()) if 1 << k < max_batch_size]
    return [*sizes, max_batch_size]


def _load(meta: BundleMeta, onnx_file: str | os.PathLike, options: ort.SessionOptions,
          providers: list) -> ort.InferenceSession:
    try:
        session = ort.InferenceSession(str(onnx_file), options, providers=providers)
    except ProviderError:
        raise
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise BundleError(f"{meta.name}: ONNX Runtime cannot load the graph: {str(exc).splitlines()[0]}") from None
    # ORT's Python run() catches an execution-provider failure, switches the session to the CPU for
    # good and retries, only printing it: `provider` would then be wrong. Let the failure surface.
    session.disable_fallback()
    return session


def check_io(session: ort.InferenceSession, meta: BundleMeta) -> None:
    """The graph takes [batch, C, H, W] and gives the outputs model.json declares (rbn.contract.bundle.graph_outputs)."""
    spec = meta.input
    expected = {
        "input": {spec.name: [spec.channels, spec.height, spec.width]},
        "output": graph_outputs(meta),
    }
    actual = {
        "input": {i.name: (i.shape, i.type) for i in session.get_inputs()},
        "output": {o.name: (o.shape, o.type) for o in session.get_outputs()},
    }
    for kind in ("input", "output"):
        if set(actual[kind]) != set(expected[kind]):
            raise BundleError(
                f"{meta.name}: graph {kind}s are {sorted(actual[kind])}, model.json expects {sorted(expected[kind])}"
            )
        for name, want in expected[kind].items():
            shape, dtype = actual[kind][name]
            if dtype != "tensor(float)":
                raise BundleError(f"{meta.name}: {kind} {name!r} is {dtype}, expected tensor(float)")
            batch_ok = len(shape) == len(want) + 1 and not (isinstance(shape[0], int) and shape[0] not in (0, -1))
            if not batch_ok or list(shape[1:]) != want:
                dims = ", ".join(map(str, want))
                raise BundleError(f"{meta.name}: {kind} {name!r} has shape {shape}, expected [batch, {dims}]")
