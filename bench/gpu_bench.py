"""RBN-ResNet-50 vs BN-ResNet-50 in ONNX Runtime on a GPU, with and without IOBinding and CUDA
graphs, and the service's throughput on the same machine. Prints a Markdown section.

bench/gpu_check.sh installs onnxruntime-gpu and runs this with ``--providers cuda``. With
``--providers cpu --arch resnet20`` it runs anywhere, which is how the tests exercise it.

1. Random-weight networks (bench/rbn_vs_bn_latency.randomize), exported three ways: RBN folded
   and BN folded with ``rbn_stats`` (``rbn.library.export.export_onnx``; the service's two arms), and BN
   the ordinary way (logits only, so ONNX Runtime fuses Conv+BN).
2. Proof that the CUDA provider runs the graph: ``session.get_providers()``, the provider ORT's
   profiler reports for every node, and the outputs against torch.
3. Each graph at each batch size: ``session.run`` with numpy in and out (what the service does),
   IOBinding (input and outputs stay on the device), IOBinding + CUDA graph (the provider option
   ``enable_cuda_graph``; one session per fixed shape, outputs bound to pre-allocated buffers).
   Session options mirror ``service.core.runtime.ModelRuntime``.
4. If ONNX Runtime cannot run on CUDA: the same networks timed with torch on CUDA (eager and
   CUDA graph), and the section says plainly that ORT's CUDA provider was not measured.
5. The service: the RBN network written as a bundle to a temporary repository, ``python -m
   service.cli serve --providers cuda`` on it, and bench/httpload.py (asyncio + httpx, several
   processes) POSTing one JPEG of the input size at high concurrency.

    python bench/gpu_bench.py [--providers cuda] [--arch resnet50] [--batches 1,32,128] [--seconds 2]

bench/gpu_check.sh runs it in steps, each under its own time budget, so that the exports (torch) and the
measurements (onnxruntime-gpu) can run in different interpreters and a cut-off step loses only itself:

    python bench/gpu_bench.py --export-only DIR --arch resnet50      # torch: the three graphs + meta + reference
    python bench/gpu_bench.py --graphs DIR --no-service              # ORT timings of those graphs (timing.json)
    python bench/gpu_bench.py --shipped fmnist-resnet20-rbn --no-service   # the shipped pair, no torch needed
    python bench/gpu_bench.py --graphs DIR --service-only            # the service on DIR's RBN graph
    python bench/gpu_bench.py --graphs DIR --graphs DIR2 --memory    # device memory per model, one process each
"""

from __future__ import annotations

import argparse
import collections
import gc
import importlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from functools import partial
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    ROOT,
    SAMPLE_PNG,
    Point,
    ServerProcess,
    emit,
    exit_on_sigterm,
    free_port,
    header,
    http,
    parse_ints,
    progress,
    python_env,
    time_calls,
    usable_cpus,
)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GRAPHS = ("RBN folded", "BN folded (+ rbn_stats)", "BN ordinary (logits only)")
VARIANTS = ("session.run (numpy)", "IOBinding", "IOBinding + CUDA graph")
SERVICE_PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "orjson", "PIL",
                    "prometheus_client", "httpx")
SHAPES = {"resnet50": ((3, 224, 224), 1000), "resnet20": ((1, 28, 28), 10), "efficientnet-lite0": ((3, 224, 224), 1000)}
GRAPH_FILES = dict(zip(GRAPHS, ("rbn.onnx", "bn.onnx", "bn_plain.onnx"), strict=True))


# --- set-up ------------------------------------------------------------------------------------
def bundle_module_note() -> str | None:
    """rbn.library.export needs three tensor names from rbn.contract.bundle, whose schema needs pydantic. Where
    pydantic is missing (the GPU image has none unless brought along), put the names in its place."""
    try:
        import pydantic  # noqa: F401
        return None
    except ImportError:
        pass
    shim = types.ModuleType("rbn.contract.bundle")
    shim.INPUT_NAME, shim.LOGITS_NAME, shim.STATS_NAME = "input", "logits", "rbn_stats"
    sys.modules["rbn.contract.bundle"] = shim
    return "pydantic is not installed: rbn.contract.bundle replaced by its three tensor names for the export"


def service_threads() -> int:
    """The service's default intra-op thread count (service.core.runtime.default_threads)."""
    try:
        from service.core.runtime import default_threads

        return default_threads()
    except ImportError:  # the service's dependencies are not all there: the same rule
        return max(1, min(8, usable_cpus() - 1))


def session_options(threads: int, profile_prefix: str | None = None):
    """The service's own session options (service.core.runtime.session_options), optionally profiling."""
    from service.core.runtime import session_options as service_options

    options = service_options(threads)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return options


def providers_for(kind: str, device: int, cuda_graph: bool = False) -> list:
    if kind == "cpu":
        return [CPU]
    try:  # the service's CUDA provider options (cuDNN algorithm search, arena), as service.core.runtime builds them
        from service.core.runtime import cuda_provider_options

        options: dict = cuda_provider_options(device)
    except ImportError:  # an older service, or its dependencies missing
        options = {"device_id": device, "cudnn_conv_algo_search": "HEURISTIC"}
    if cuda_graph:
        options["enable_cuda_graph"] = "1"
    return [(CUDA, options), CPU]


def cuda_library_dirs() -> list[str]:
    """Folders of the CUDA/cuDNN libraries that pip's nvidia-* packages (torch's) installed."""
    dirs: list[str] = []
    for base in sys.path:
        root = Path(base or ".") / "nvidia"
        if root.is_dir():
            for lib in sorted(root.glob("*/lib")) + sorted(root.glob("*/*/lib")):
                if any(lib.glob("lib*.so*")) and str(lib) not in dirs:
                    dirs.append(str(lib))
    return dirs


def gpu_facts() -> list[str]:
    facts = []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             check=False, capture_output=True, text=True, timeout=20).stdout.strip()
        if out:
            facts.append(f"GPU (nvidia-smi): {out}")
    except (OSError, subprocess.TimeoutExpired):
        pass
    try:
        import torch
    except ImportError:
        return facts + ["torch is not importable here"]
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.append(f"torch sees {torch.cuda.get_device_name(0)} ({p.multi_processor_count} SMs, "
                     f"{p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    else:
        facts.append("torch sees no CUDA device")
    return facts


def export_graphs(arch: str) -> tuple[dict[str, bytes], dict, tuple[int, int, int], list[str]]:
    """The three graphs, the torch modules they came from, the input shape, {stats layer name: channels}."""
    import torch

    from bench.rbn_vs_bn_latency import plain_export, randomize
    from rbn.library.export import export_onnx, inference_model, stats_channels, stats_layers
    from rbn.library.resnet import build

    shape, classes = SHAPES[arch]
    torch.manual_seed(0)
    if arch == "efficientnet-lite0":  # the real architecture (random weights), converted BN -> RBN
        import copy

        from rbn.library.convert import convert_bn_to_rbn
        from rbn.library.intake import efficientnet_lite0

        bn = randomize(efficientnet_lite0(pretrained=False), seed=1)
        rbn = copy.deepcopy(bn)
        convert_bn_to_rbn(rbn)
        rbn = randomize(rbn, seed=0)
    else:
        rbn = randomize(build(arch, "rbn", shape[0], classes), seed=0)
        bn = randomize(build(arch, "bn", shape[0], classes), seed=1)
    t0 = time.perf_counter()
    graphs = {
        GRAPHS[0]: export_onnx(rbn, input_shape=shape),
        GRAPHS[1]: export_onnx(bn, input_shape=shape),
        GRAPHS[2]: plain_export(bn, shape),
    }
    progress(f"exported {arch} three ways in {time.perf_counter() - t0:.1f} s "
             f"({', '.join(f'{len(g) / 1e6:.1f} MB' for g in graphs.values())})")
    modules = {GRAPHS[0]: inference_model(rbn), GRAPHS[1]: inference_model(bn), GRAPHS[2]: bn.eval()}
    return graphs, modules, shape, dict(zip(stats_layers(rbn, shape), stats_channels(rbn, shape), strict=True))


# --- ONNX Runtime ------------------------------------------------------------------------------
def provider_census(graph: bytes, kind: str, device: int, threads: int, x: np.ndarray) -> dict[str, int]:
    """Nodes per execution provider, as ORT's profiler reports them for a real run."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        session = ort.InferenceSession(graph, session_options(threads, os.path.join(tmp, "profile")),
                                       providers=providers_for(kind, device))
        for _ in range(2):
            session.run(None, {"input": x})
        with open(session.end_profiling()) as f:
            events = json.load(f)
    nodes: dict[str, str] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            nodes[e["name"]] = e.get("args", {}).get("provider", "?")
    return dict(collections.Counter(nodes.values()))


def time_ort(graphs: dict[str, bytes], kind: str, device: int, threads: int, batches: list[int],
             shape: tuple[int, int, int], seconds: float, iters: int,
             results: dict | None = None) -> dict[tuple[str, int], dict[str, Point | str]]:
    """(graph, batch) -> variant -> Point, or a one-line reason where a variant could not run. Filled cell by
    cell into ``results`` when given, so that a run stopped half-way still has what it measured."""
    import onnxruntime as ort

    dev = "cuda" if kind == "cuda" else "cpu"
    sessions = {name: ort.InferenceSession(g, session_options(threads), providers=providers_for(kind, device))
                for name, g in graphs.items()}
    results = {} if results is None else results
    rng = np.random.default_rng(0)
    for batch in batches:
        x = rng.standard_normal((batch, *shape), dtype=np.float32)
        for name, session in sessions.items():
            row: dict[str, Point | str] = {}
            feeds = {"input": x}
            try:
                reference = session.run(None, feeds)
            except Exception as exc:  # e.g. out of device memory at a large batch
                results[(name, batch)] = dict.fromkeys(VARIANTS, failure(exc))
                continue
            row[VARIANTS[0]] = attempt(partial(time_run, session, x, seconds, iters))
            row[VARIANTS[1]] = attempt(partial(time_iobinding, session, x, dev, device, seconds, iters))
            if kind == "cuda":
                row[VARIANTS[2]] = time_cuda_graph(graphs[name], device, threads, x, reference, seconds, iters)
            else:
                row[VARIANTS[2]] = "n/a (CUDA only)"
            results[(name, batch)] = row
            progress(f"ORT {name} batch {batch}: " + ", ".join(
                f"{v}: {p.images_per_s:.0f} img/s" if isinstance(p, Point) else f"{v}: {p}" for v, p in row.items()))
            gc.collect()
    return results


def time_run(session, x: np.ndarray, seconds: float, iters: int) -> Point:
    """session.run with numpy in and out: the copies to and from the device are part of each call."""
    feeds = {"input": x}
    return time_calls(lambda: session.run(None, feeds), len(x), seconds, iters)


def time_iobinding(session, x: np.ndarray, dev: str, device: int, seconds: float, iters: int) -> Point:
    """Input copied to the device once; outputs allocated there by ORT on each call."""
    import onnxruntime as ort

    binding = session.io_binding()
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, dev, device)
    binding.bind_ortvalue_input("input", x_dev)
    for output in session.get_outputs():
        binding.bind_output(output.name, dev, device)

    def call() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return time_calls(call, len(x), seconds, iters)


def failure(exc: BaseException) -> str:
    return "failed: " + (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


def attempt(measure) -> Point | str:
    """A measurement, or why it failed (one line), so that one bad cell does not end the run."""
    try:
        return measure()
    except Exception as exc:  # ORT raises its own unrelated exception types
        return failure(exc)


def time_cuda_graph(graph: bytes, device: int, threads: int, x: np.ndarray, reference: list[np.ndarray],
                    seconds: float, iters: int) -> Point | str:
    """One session for this fixed shape with enable_cuda_graph; input and outputs pre-allocated on the GPU."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(graph, session_options(threads), providers=providers_for("cuda", device, True))
        binding = session.io_binding()
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", device)
        binding.bind_ortvalue_input("input", x_dev)
        outputs = []
        for output, ref in zip(session.get_outputs(), reference, strict=True):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(ref.shape), np.float32, "cuda", device)
            binding.bind_ortvalue_output(output.name, value)
            outputs.append(value)

        def replay() -> None:
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()

        point = time_calls(replay, len(x), seconds, iters, warmup=5)  # the first runs capture the graph
        for value, ref in zip(outputs, reference, strict=True):
            got = value.numpy()
            if not np.all(np.isfinite(ref)):
                continue  # nothing to compare against
            scale = float(np.abs(ref).max()) or 1.0
            if not np.all(np.isfinite(got)) or float(np.abs(got - ref).max()) / scale > 1e-2:
                return "ran, but its outputs differ from session.run's"
        return point
    except Exception as exc:  # ORT raises its own unrelated types (e.g. not all nodes on CUDA)
        return failure(exc)


def reference_check(graph: bytes, module, kind: str, device: int, threads: int, shape: tuple[int, int, int]) -> str:
    """Max |ORT - torch (CPU, fp32)| over max |torch|, on the RBN graph's logits and stats."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(1).standard_normal((2, *shape), dtype=np.float32)
    session = ort.InferenceSession(graph, session_options(threads), providers=providers_for(kind, device))
    got = session.run(["logits", "rbn_stats"], {"input": x})
    with torch.inference_mode():
        want = [t.numpy() for t in module.cpu()(torch.from_numpy(x))][:2]  # logits, rbn_stats first
    parts = []
    for name, g, w in zip(("logits", "rbn_stats"), got, want, strict=True):
        parts.append(f"{name} {float(np.abs(g - w).max()) / (float(np.abs(w).max()) or 1.0):.1e}")
    return "relative max difference vs torch on the CPU (fp32): " + ", ".join(parts)


# --- torch fallback ----------------------------------------------------------------------------
def time_torch(modules: dict, batches: list[int], shape: tuple[int, int, int], seconds: float,
               iters: int) -> dict[tuple[str, int], dict[str, Point | str]]:
    import torch

    torch.backends.cudnn.benchmark = True
    results: dict[tuple[str, int], dict[str, Point | str]] = {}
    for batch in batches:
        for name, module in modules.items():
            m = module.cuda().eval()
            x = torch.randn(batch, *shape, device="cuda")
            row: dict[str, Point | str] = {}
            with torch.inference_mode():
                def eager(m=m, x=x) -> None:
                    m(x)
                    torch.cuda.synchronize()

                row["torch eager"] = time_calls(eager, batch, seconds, iters)
                try:
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        for _ in range(3):
                            m(x)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        m(x)

                    def replay(g=graph) -> None:
                        g.replay()
                        torch.cuda.synchronize()

                    row["torch CUDA graph"] = time_calls(replay, batch, seconds, iters)
                except Exception as exc:
                    row["torch CUDA graph"] = "failed: " + str(exc).splitlines()[0][:160]
            results[(name, batch)] = row
            progress(f"torch {name} batch {batch}: " + ", ".join(
                f"{v}: {p.images_per_s:.0f} img/s" if isinstance(p, Point) else f"{v}: {p}" for v, p in row.items()))
            torch.cuda.empty_cache()
    return results


# --- the service -------------------------------------------------------------------------------
def write_bundle(repository: Path, graph: bytes, arch: str, shape: tuple[int, int, int], classes: int,
                 layers: dict[str, int]) -> str:
    from rbn.contract.bundle import write_bundle as write

    channels = shape[0]
    mean, std = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]) if channels == 3 else ([0.286] * channels, [0.353] * channels)
    name = f"bench-{arch}-rbn"
    write(repository, {
        "name": name, "architecture": arch, "norm": "rbn", "labels": [f"class_{i:04d}" for i in range(classes)],
        "input": {"channels": channels, "height": shape[1], "width": shape[2], "mean": mean, "std": std},
        "stats_layers": list(layers), "stats_channels": list(layers.values()), "max_batch_size": 128,
    }, graph)
    return name


def request_image(shape: tuple[int, int, int], folder: Path) -> tuple[Path, str]:
    """A JPEG of the network's input size (a shipped photo, resized), or the shipped 28x28 PNG."""
    if shape[1:] == (28, 28):
        return SAMPLE_PNG, "image/png"
    from PIL import Image

    photos = sorted((ROOT / "samples" / "photos").glob("*.jpg"))
    if photos:
        image = Image.open(photos[0]).convert("RGB").resize((shape[2], shape[1]))
    else:
        yy, xx = np.mgrid[0 : shape[1], 0 : shape[2]]
        image = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    path = folder / "request.jpg"
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path, "image/jpeg"


def importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # ImportError, or a dependency of it missing or broken
        return False


def run_service(args, graph: bytes, shape, classes: int, layers: dict[str, int],
                arch: str | None = None) -> tuple[list[str], list[dict], str | None]:
    """Notes, one result per concurrency level, and the provider the service reported."""
    from bench import httpload

    missing = [p for p in SERVICE_PACKAGES if not importable(p)]
    if missing:
        return [f"Service: **not measured**: Python packages missing here: {', '.join(missing)} "
                "(bring their wheels to the parts folder; see bench/gpu_check.sh)."], [], None
    notes: list[str] = []
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="gpu-bench-") as tmp:
        folder = Path(tmp)
        repository = folder / "models"
        name = write_bundle(repository, graph, re.sub(r"[^a-z0-9-]+", "-", (arch or args.arch).lower())[:40].strip("-"),
                            shape, classes, layers)
        image, content_type = request_image(shape, folder)
        body = image.read_bytes()
        port = free_port()
        instances = args.service_instances or (2 if args.providers == "cuda" else 1)
        flags = ["--providers", args.providers, "--max-batch-size", str(args.service_max_batch),
                 "--max-queue-size", str(max(1024, 4 * max(args.service_concurrency))), "--instances", str(instances)]
        command = [sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repository),
                   "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", *flags]
        extra_env = {}
        if args.providers == "cuda":
            lib_dirs = cuda_library_dirs()
            extra_env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs + [os.environ.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
        progress(f"starting the service: {' '.join(flags)}")
        server = ServerProcess("service", command, port, folder / "service.log", python_env(extra_env))
        provider = None
        try:
            t0 = time.perf_counter()
            server.wait_until(lambda: http("GET", server.url + "/readyz")[0] == 200, args.service_ready_timeout)
            ready_s = time.perf_counter() - t0
            status, data = http("GET", f"{server.url}/models/{name}")
            provider = json.loads(data).get("provider") if status == 200 else None
            status, data = http("POST", server.url + "/predict", body, content_type, timeout=60)
            if status != 200:
                raise RuntimeError(f"/predict answered {status}: {data[:300]!r}")
            notes.append(f"Service: `python -m service.cli serve {' '.join(flags)}` on a bundle of the RBN graph "
                         f"(ready in {ready_s:.0f} s, warm-up included); `GET /models/{name}` says provider "
                         f"**{provider}**. Client: bench/httpload.py (asyncio + httpx, {args.client_processes} "
                         f"processes), POSTing a {shape[2]}x{shape[1]} {content_type} of {len(body)} bytes as the raw "
                         f"body; {args.service_warmup:g} s warm-up, {args.service_duration:g} s per row; loopback.")
            for c in args.service_concurrency:
                result = httpload.run(server.url + "/predict", body, content_type, c, args.service_duration,
                                      args.service_warmup, args.client_processes)
                progress(f"service c={c}: {result['req_per_s']:.0f} req/s, p50 {result['p50_ms']:.1f} ms, "
                         f"errors {result['errors']}")
                results.append(result)
        except Exception as exc:
            notes.append(f"Service: **failed**: {str(exc).strip().splitlines()[0]}")
            notes.append("```\n" + server.log_tail(15) + "\n```")
        finally:
            server.stop()
    return notes, results, provider


# --- report ------------------------------------------------------------------------------------
def cell(p: Point | str | None) -> str:
    if p is None:
        return "—"
    if isinstance(p, str):
        return p
    return f"{p.images_per_s:.0f} img/s · {p.p50_ms:.2f} ms"


def results_table(results: dict[tuple[str, int], dict[str, Point | str]], variants: tuple[str, ...]) -> list[str]:
    lines = ["| graph | batch | " + " | ".join(variants) + " |", "|---|---|" + "---|" * len(variants)]
    for (name, batch), row in sorted(results.items(), key=lambda kv: (kv[0][1], GRAPHS.index(kv[0][0]))):
        lines.append(f"| {name} | {batch} | " + " | ".join(cell(row.get(v)) for v in variants) + " |")
    return lines


def ratio_lines(results, variants: tuple[str, ...], batches: list[int]) -> list[str]:
    lines = []
    for batch in batches:
        for base in GRAPHS[1:]:
            parts = []
            for v in variants:
                a, b = results.get((GRAPHS[0], batch), {}).get(v), results.get((base, batch), {}).get(v)
                if isinstance(a, Point) and isinstance(b, Point):  # time per image: RBN's over BN's
                    parts.append(f"{v} {b.images_per_s / a.images_per_s:.2f}")
            if parts:
                target = " (target ≤ 1.10 at batch 128)" if batch == 128 else ""
                lines.append(f"- Latency RBN / {base}, batch {batch}: " + ", ".join(parts) + target)
    return lines


def service_table(results: list[dict], ort_results, max_batch: int, targets: bool) -> list[str]:
    runs = {batch: row.get(VARIANTS[0]) for (name, batch), row in ort_results.items() if name == GRAPHS[0]}
    runs = {b: p for b, p in runs.items() if isinstance(p, Point)}
    best = max(runs.values(), key=lambda p: p.images_per_s) if runs else None
    same = runs.get(max_batch)
    lines = ["| concurrency | req/s (= img/s) | p50 ms | p95 ms | p99 ms | errors | "
             f"/ in-process session.run at batch {max_batch} | / best in-process session.run |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        over_same = f"{r['req_per_s'] / same.images_per_s:.2f}" if same else "—"
        over_best = f"{r['req_per_s'] / best.images_per_s:.2f} (batch {best.batch})" if best else "—"
        lines.append(f"| {r['concurrency']} | {r['req_per_s']:.0f} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['errors']} | {over_same} | {over_best} |")
    if results and best and targets:
        top = max(results, key=lambda r: r["req_per_s"])
        ratio = top["req_per_s"] / best.images_per_s
        lines += ["", f"- Service / in-process (best session.run) at concurrency {top['concurrency']}: {ratio:.2f} "
                  f"(target ≥ 0.8: {'met' if ratio >= 0.8 else '**missed**'})"]
    return lines


def torch_first():
    """Import torch before onnxruntime: it loads the CUDA and cuDNN libraries onnxruntime-gpu needs."""
    import torch

    return torch


# --- the shell script's helpers -----------------------------------------------------------------
def preflight(device: int, kind: str = "cuda") -> int:
    """A tiny graph on the CUDA provider (or the CPU one, for the dry run): 0 when session.get_providers() has it
    and the answer is right."""
    try_torch()
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    print(f"onnxruntime {ort.__version__} from {Path(ort.__file__).parent}; available providers "
          f"{ort.get_available_providers()}")
    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = min(model.ir_version, 10)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=providers_for(kind, device))
        x = np.array([[-1, 0, 1], [2, -3, 4]], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        providers = session.get_providers()
        wanted = CUDA if kind == "cuda" else CPU
        assert providers[0] == wanted, f"session.get_providers() is {providers}"
        assert np.array_equal(y, np.maximum(x, 0)), "wrong answer"
    except Exception as exc:
        print(f"{kind.upper()} provider NOT active: "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}")
        return 1
    print(f"{kind.upper()} provider active: session.get_providers() = {providers} (onnx {onnx.__version__})")
    return 0



# --- graphs on disk: exported by one interpreter (torch), measured by another (onnxruntime-gpu) ----------
def save_graphs(folder: Path, arch: str) -> None:
    """The three graphs, meta.json and torch's reference outputs for the RBN graph (reference.npz)."""
    import torch

    graphs, modules, shape, layers = export_graphs(arch)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in graphs.items():
        (folder / GRAPH_FILES[name]).write_bytes(data)
    x = np.random.default_rng(1).standard_normal((2, *shape), dtype=np.float32)
    with torch.inference_mode():
        logits, stats = [t.numpy() for t in modules[GRAPHS[0]].cpu()(torch.from_numpy(x))][:2]
    np.savez(folder / "reference.npz", x=x, logits=logits, rbn_stats=stats)
    meta = {"arch": arch, "shape": list(shape), "classes": SHAPES[arch][1], "layers": layers,
            "graphs": {name: GRAPH_FILES[name] for name in graphs}, "torch": torch.__version__}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    progress(f"wrote {arch}'s graphs to {folder}")


def load_graphs(folder: Path) -> tuple[str, dict[str, bytes], tuple[int, int, int], int, dict[str, int], dict | None]:
    """(arch, graphs, input shape, classes, {stats layer: channels}, torch reference or None) from save_graphs."""
    meta = json.loads((folder / "meta.json").read_text())
    graphs = {name: (folder / file).read_bytes() for name, file in meta["graphs"].items()}
    reference = dict(np.load(folder / "reference.npz")) if (folder / "reference.npz").is_file() else None
    return meta["arch"], graphs, tuple(meta["shape"]), meta["classes"], meta["layers"], reference


def load_shipped(name: str, repository: Path = ROOT / "models") -> tuple[str, dict[str, bytes], tuple[int, int, int], int,
                                                                        dict[str, int], None]:
    """A shipped RBN bundle and its baseline (no torch needed): the RBN graph and the BN graph the service serves."""
    def bundle(n: str) -> tuple[dict, bytes]:
        meta = json.loads((repository / n / "model.json").read_text())
        return meta, (repository / n / str(meta.get("version", 1)) / "model.onnx").read_bytes()

    rbn_meta, rbn_graph = bundle(name)
    _, bn_graph = bundle(rbn_meta["baseline"])
    spec = rbn_meta["input"]
    shape = (spec["channels"], spec["height"], spec["width"])
    layers = dict(zip(rbn_meta.get("stats_layers", []), rbn_meta.get("stats_channels", []), strict=False))
    return f"shipped {name} (baseline {rbn_meta['baseline']})", {GRAPHS[0]: rbn_graph, GRAPHS[1]: bn_graph}, shape, \
        len(rbn_meta["labels"]), layers, None


def against_reference(graph: bytes, reference: dict | None, kind: str, device: int, threads: int,
                      shape: tuple[int, int, int]) -> str:
    """Max relative difference of the RBN graph's logits and rbn_stats: against torch's saved outputs where
    there are some, else against ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    if reference is not None:
        x, want, what = reference["x"], [reference["logits"], reference["rbn_stats"]], "torch on the CPU (fp32)"
    else:
        x = np.random.default_rng(1).standard_normal((2, *shape), dtype=np.float32)
        cpu = ort.InferenceSession(graph, session_options(threads), providers=[CPU])
        want, what = cpu.run(["logits", "rbn_stats"], {"input": x}), "ONNX Runtime's CPU provider"
    session = ort.InferenceSession(graph, session_options(threads), providers=providers_for(kind, device))
    got = session.run(["logits", "rbn_stats"], {"input": x})
    parts = [f"{n} {float(np.abs(g - w).max()) / (float(np.abs(w).max()) or 1.0):.1e}"
             for n, g, w in zip(("logits", "rbn_stats"), got, want, strict=True)]
    return f"relative max difference vs {what}: " + ", ".join(parts)


def save_timing(folder: Path | None, results: dict) -> None:
    """img/s per (graph, batch, variant), for the service step's ratio to in-process."""
    if folder is None or not results:
        return
    rows = [{"graph": g, "batch": b, "variant": v, "images_per_s": p.images_per_s, "p50_ms": p.p50_ms}
            for (g, b), row in results.items() for v, p in row.items() if isinstance(p, Point)]
    (folder / "timing.json").write_text(json.dumps(rows, indent=1))


def load_timing(folder: Path | None) -> dict:
    if folder is None or not (folder / "timing.json").is_file():
        return {}
    results: dict = {}
    for r in json.loads((folder / "timing.json").read_text()):
        results.setdefault((r["graph"], r["batch"]), {})[r["variant"]] = Point(
            batch=r["batch"], images_per_s=r["images_per_s"], p50_ms=r["p50_ms"], **point_extra())
    return results


def point_extra() -> dict:
    """Point's fields besides batch, images_per_s and p50_ms, with neutral values (older/newer Point shapes)."""
    import dataclasses

    return {f.name: 0.0 for f in dataclasses.fields(Point) if f.name not in ("batch", "images_per_s", "p50_ms")}


# --- device memory per model --------------------------------------------------------------------
def device_memory_used(device: int) -> int | None:
    """Bytes in use on the GPU (NVML), or None where NVML is missing."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(device)).used)
    except Exception:  # no nvidia-ml-py, no driver
        return None


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def memory_one(path: str, kind: str, device: int, threads: int, batch: int) -> dict:
    """In this process: memory before, after loading ``path`` and after one run at ``batch`` (GPU via NVML on
    CUDA; the process's resident memory on the CPU, where that stands in for it)."""
    import onnxruntime as ort

    if kind == "cuda" and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from pip's nvidia-* wheels (torch's), without importing torch
    measure = (lambda: device_memory_used(device)) if kind == "cuda" else rss_bytes
    before = measure()
    session = ort.InferenceSession(path, session_options(threads), providers=providers_for(kind, device))
    loaded = measure()
    shape = [d if isinstance(d, int) else batch for d in session.get_inputs()[0].shape]
    session.run(None, {"input": np.random.default_rng(0).standard_normal(shape, dtype=np.float32)})
    ran = measure()
    return {"what": "GPU (NVML)" if kind == "cuda" else "process RSS (CPU stand-in)", "before": before,
            "loaded": loaded, "ran": ran, "batch": batch, "providers": session.get_providers()}


def memory_lines(folders: list[Path], kind: str, device: int, threads: int, batch: int, timeout: float) -> list[str]:
    lines = [f"### Memory per model ({'GPU, NVML' if kind == 'cuda' else 'CPU stand-in: process RSS'}), "
             f"one process per graph, after one run at batch {batch}", "",
             "| model | graph | loaded MiB | after a run MiB | providers |", "|---|---|---|---|---|"]
    for folder in folders:
        meta = json.loads((folder / "meta.json").read_text())
        for name, file in meta["graphs"].items():
            if name == GRAPHS[2]:
                continue  # the served graphs only (RBN and its baseline), one process each
            try:
                done = subprocess.run([sys.executable, __file__, "--memory-one", str(folder / file), "--providers", kind,
                                       "--device", str(device), "--intra-op-threads", str(threads),
                                       "--batches", str(batch)], capture_output=True, text=True, timeout=timeout,
                                      check=True)
                r = json.loads(done.stdout.strip().splitlines()[-1])
                if r["before"] is None:
                    lines.append(f"| {meta['arch']} | {name} | n/a: NVML not available | | {r['providers']} |")
                    continue
                mib = [(r[k] - r["before"]) / 2**20 for k in ("loaded", "ran")]
                lines.append(f"| {meta['arch']} | {name} | {mib[0]:.0f} | {mib[1]:.0f} | {', '.join(r['providers'])} |")
            except Exception as exc:  # timeout, a crash, out of memory
                lines.append(f"| {meta['arch']} | {name} | {failure(exc)} | | |")
            progress(lines[-1])
    return lines

# --- main --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--providers", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--device", type=int, default=0, help="CUDA device index")
    p.add_argument("--arch", choices=sorted(SHAPES), default="resnet50")
    p.add_argument("--batches", type=parse_ints, default=[1, 32, 128])
    p.add_argument("--seconds", type=float, default=2.0, help="time per (graph, batch, variant)")
    p.add_argument("--iters", type=int, default=10, help="at least this many timed calls per point")
    p.add_argument("--intra-op-threads", type=int, default=0, help="0 = the service default")
    p.add_argument("--torch", action="store_true", help="also time torch on CUDA when ORT's CUDA provider works")
    p.add_argument("--no-service", action="store_true", help="skip the service measurement")
    p.add_argument("--service-only", action="store_true", help="only the service (needs --graphs)")
    p.add_argument("--service-concurrency", type=parse_ints, default=[64, 256])
    p.add_argument("--service-duration", type=float, default=10.0)
    p.add_argument("--service-warmup", type=float, default=3.0)
    p.add_argument("--service-max-batch", type=int, default=32)
    p.add_argument("--service-instances", type=int, default=0, help="0: 2 on CUDA, 1 on the CPU")
    p.add_argument("--service-ready-timeout", type=float, default=240.0)
    p.add_argument("--client-processes", type=int, default=4)
    p.add_argument("--out", help="also write the Markdown section to this file")
    p.add_argument("--export-only", type=Path, metavar="DIR", help="export --arch's graphs to DIR (torch) and stop")
    p.add_argument("--graphs", type=Path, action="append", metavar="DIR",
                   help="measure the graphs --export-only wrote to DIR instead of exporting (no torch needed)")
    p.add_argument("--shipped", metavar="NAME", help="measure a shipped RBN bundle and its baseline (no torch needed)")
    p.add_argument("--memory", action="store_true", help="only the memory per model of the --graphs folders")
    p.add_argument("--memory-one", metavar="ONNX", help=argparse.SUPPRESS)
    p.add_argument("--simulation", action="store_true",
                   help="label the section a CPU simulation of the GPU check (bench/gpu_check.sh's dry run)")
    p.add_argument("--preflight", action="store_true", help="only check the CUDA provider on a tiny graph (exit 0/1)")
    p.add_argument("--cuda-lib-path", action="store_true",
                   help="only print the folders of pip's CUDA/cuDNN libraries, ':'-separated (for LD_LIBRARY_PATH)")
    return p


def try_torch():
    """torch, imported before onnxruntime where it exists (it loads the CUDA and cuDNN libraries that
    onnxruntime-gpu needs), else None: the measurements from saved graphs need no torch."""
    try:
        return torch_first()
    except ImportError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cuda_lib_path:
        print(os.pathsep.join(cuda_library_dirs()))
        return 0
    if args.preflight:
        return preflight(args.device, args.providers)
    threads = args.intra_op_threads or service_threads()
    if args.memory_one:
        print(json.dumps(memory_one(args.memory_one, args.providers, args.device, threads, args.batches[-1])))
        return 0
    exit_on_sigterm()
    if args.export_only:
        note = bundle_module_note()
        if note:
            progress(note)
        save_graphs(args.export_only, args.arch)
        return 0
    started = time.perf_counter()
    if args.memory:
        lines = memory_lines(args.graphs or [], args.providers, args.device, threads, args.batches[-1],
                             timeout=max(30.0, args.service_ready_timeout / 4))
        emit(lines + ["", f"Total time: {time.perf_counter() - started:.0f} s."], args.out)
        return 0
    torch = try_torch()
    import onnxruntime as ort

    notes: list[str] = []
    shim_note = bundle_module_note()
    if shim_note:
        notes.append(shim_note)
    facts = [f"onnxruntime {ort.__version__} from `{Path(ort.__file__).parent}`; available providers "
             f"{ort.get_available_providers()}"]
    if args.providers == "cuda":
        facts += gpu_facts()
    graph_dir = args.graphs[0] if args.graphs else None
    reference = None
    modules: dict = {}
    if graph_dir is not None:
        arch, graphs, shape, classes, layers, reference = load_graphs(graph_dir)
    elif args.shipped:
        arch, graphs, shape, classes, layers, reference = load_shipped(args.shipped)
    else:
        if torch is None:
            raise SystemExit("torch is needed to export the graphs: pass --graphs DIR or --shipped NAME")
        arch = args.arch
        graphs, modules, shape, layers = export_graphs(arch)
        classes = SHAPES[arch][1]
    x1 = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)

    # Is ORT really running on the requested provider?
    ort_failure = None
    census: dict[str, int] = {}
    try:
        session = ort.InferenceSession(graphs[GRAPHS[0]], session_options(threads),
                                       providers=providers_for(args.providers, args.device))
        active = session.get_providers()
        del session
        wanted = CUDA if args.providers == "cuda" else CPU
        if wanted not in active:
            raise RuntimeError(f"the session runs on {active}, not {wanted}")
        if not args.service_only:
            census = provider_census(graphs[GRAPHS[0]], args.providers, args.device, threads, x1)
            if census.get(wanted, 0) == 0:
                raise RuntimeError(f"ORT's profiler shows no node on {wanted}: {census}")
            total = sum(census.values())
            facts.append(f"Session providers {active}; ORT's profiler: {census.get(wanted, 0)} of {total} nodes of the "
                         f"RBN graph ran on {wanted}" + (f" ({census})" if len(census) > 1 else ""))
    except Exception as exc:
        ort_failure = failure(exc).removeprefix("failed: ")
        progress(f"ONNX Runtime on {args.providers} failed: {ort_failure}")
    if ort_failure is None and not args.service_only:
        try:
            if modules:
                facts.append(reference_check(graphs[GRAPHS[0]], modules[GRAPHS[0]], args.providers, args.device, threads,
                                             shape))
            else:
                facts.append(against_reference(graphs[GRAPHS[0]], reference, args.providers, args.device, threads,
                                               shape))
        except Exception as exc:
            facts.append(f"comparison with the reference {failure(exc)}")

    ort_results: dict = {}
    torch_results: dict = {}
    cut_off = False
    if ort_failure is None and not args.service_only:
        try:
            time_ort(graphs, args.providers, args.device, threads, args.batches, shape, args.seconds, args.iters,
                     results=ort_results)
            save_timing(graph_dir, ort_results)
        except SystemExit:  # SIGTERM: the step's time budget ran out; report the cells measured so far
            cut_off = True
            notes.append(f"**Cut off** by the step's time budget (SIGTERM) after {len(ort_results)} of "
                         f"{len(args.batches) * len(graphs)} (graph, batch) rows; the missing rows were not measured.")
            save_timing(graph_dir, ort_results)
        except Exception as exc:
            ort_failure = f"timing failed: {failure(exc).removeprefix('failed: ')}"
            progress(f"ONNX Runtime on {args.providers}: {ort_failure}")
    elif args.service_only:
        ort_results = load_timing(graph_dir)
    if args.providers == "cuda" and not args.service_only and (ort_failure is not None or args.torch):
        if torch is not None and torch.cuda.is_available() and modules:
            torch_results = time_torch(modules, args.batches, shape, args.seconds, args.iters)
        else:
            notes.append("torch on CUDA not timed (torch or its modules are not here, or it sees no CUDA device).")

    service_notes: list[str] = []
    service_results: list[dict] = []
    service_provider = None
    if args.no_service:
        service_notes.append("Service: not measured in this step (--no-service).")
    elif cut_off:
        service_notes.append("Service: **not measured**: the step's time ran out first.")
    elif ort_failure is not None:
        service_notes.append("Service: **not measured**: ONNX Runtime cannot run this graph on "
                             f"{args.providers} here, and the service runs through ONNX Runtime.")
    else:
        service_notes, service_results, service_provider = run_service(args, graphs[GRAPHS[0]], shape, classes, layers,
                                                                       arch)

    # --- the Markdown section ---
    if args.simulation:
        where = "SIMULATION on the CPU (the GPU check's dry run; not a GPU figure)"
    else:
        where = "GPU" if args.providers == "cuda" else "CPU (harness check, not a GPU figure)"
    what = "the service" if args.service_only else f"RBN vs BN {arch} in ONNX Runtime ({args.providers})"
    title = f"{where}: {what}" + ("" if args.no_service or args.service_only else " and the service")
    lines = header(title, packages=("onnxruntime", "onnxruntime-gpu", "numpy", "onnx"), extra=facts + [
        (f"Networks: {arch}, input {shape}, {classes} classes; sessions as service.core.runtime.ModelRuntime builds "
         f"them (ORT_ENABLE_ALL, sequential, intra-op threads {threads}, no spinning); at least {args.seconds:g} s and "
         f"{args.iters} calls per cell; img/s and median ms per batch"),
    ])
    if ort_failure is not None:
        lines += [f"**ONNX Runtime's {'CUDA' if args.providers == 'cuda' else 'CPU'} provider was NOT measured**: "
                  f"{ort_failure}.", ""]
    if notes:
        lines += [f"- {n}" for n in notes] + [""]
    if ort_results and not args.service_only:
        lines += ["### ONNX Runtime", "", "`session.run (numpy)` copies the input to the device and the outputs back "
                  "each call, as the service does; `IOBinding` keeps both on the device; `+ CUDA graph` replays a "
                  "captured graph (fixed shape, one session per batch size).", ""]
        lines += results_table(ort_results, VARIANTS) + [""] + ratio_lines(ort_results, VARIANTS, args.batches) + [""]
    if torch_results:
        lines += ["### torch on CUDA" + (" (instead of ONNX Runtime)" if ort_failure else " (for reference)"), ""]
        torch_variants = ("torch eager", "torch CUDA graph")
        lines += results_table(torch_results, torch_variants) + [""] + ratio_lines(torch_results, torch_variants,
                                                                                    args.batches) + [""]
    if not args.no_service:
        lines += ["### The service on this machine", ""] + service_notes + [""]
    if service_results:
        lines += service_table(service_results, ort_results, args.service_max_batch, args.providers == "cuda") + [""]
    lines.append(f"Total time: {time.perf_counter() - started:.0f} s.")
    emit(lines, args.out)
    if ort_failure is not None:
        return 2
    if cut_off:
        return 124  # as `timeout` reports it: the step is marked timed out, with its partial section kept
    service_ok = args.no_service or (service_results and all(r["requests"] and not r["errors"] for r in service_results)
                                     and (args.providers != "cuda" or service_provider == "cuda"))
    return 0 if service_ok else 1


if __name__ == "__main__":
    sys.exit(main())
