"""The limit: in-process ONNX Runtime throughput and latency of each bundle, no HTTP.

Every session is built by ``service.core.runtime.ModelRuntime`` (the service's own session
construction: graph optimisation, thread counts, no spinning, providers) and timed through
``ModelRuntime.run``, the call the batcher makes, at the batch sizes the batcher forms.
Input: standard-normal tensors of the bundle's input shape. Prints a Markdown section.

    python bench/inprocess.py [--model-repository models] [--batches 1,2,4,8,16,32,64] [--seconds 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    Paused,
    Point,
    emit,
    exit_on_sigterm,
    header,
    parse_ints,
    progress,
    time_calls,
)
from service.core.config import Settings  # noqa: E402
from service.core.repository import scan  # noqa: E402
from service.core.runtime import ModelRuntime, default_threads  # noqa: E402

DEFAULT_BATCHES = "1,2,4,8,16,32,64"


def measure(run, x: np.ndarray, seconds: float, min_runs: int = 5, warmup: int = 3) -> Point:
    """Call ``run(x)`` back to back for at least ``seconds`` and ``min_runs`` calls."""
    return time_calls(lambda: run(x), len(x), seconds, min_runs, warmup)


def load_runtimes(repository: Path, names: list[str] | None, providers: str, threads: int) -> dict[str, ModelRuntime]:
    """One ModelRuntime per valid bundle (those named, else all), built exactly as the service builds it."""
    found = scan(repository)
    for folder, reason in found.errors.items():
        progress(f"skipping bundle {folder}: {reason}")
    bundles = [b for b in found.bundles if names is None or b.name in names]
    missing = set(names or []) - {b.name for b in bundles}
    if missing:
        raise SystemExit(f"no valid bundle named {sorted(missing)} in {repository}")
    if not bundles:
        raise SystemExit(f"no valid bundle in {repository} (build some with `rbn bundle ...`)")
    return {b.name: ModelRuntime(b.meta, b.onnx_file, providers, threads) for b in bundles}


def limit_table(runtimes: dict[str, ModelRuntime], batches: list[int], seconds: float,
                min_runs: int = 5) -> dict[str, list[Point]]:
    """Measure every model at every batch size (models interleaved per batch size)."""
    results: dict[str, list[Point]] = {name: [] for name in runtimes}
    rng = np.random.default_rng(0)
    for batch in batches:
        for name, runtime in runtimes.items():
            spec = runtime.meta.input
            x = rng.standard_normal((batch, spec.channels, spec.height, spec.width), dtype=np.float32)
            point = measure(runtime.run, x, seconds, min_runs)
            progress(f"in-process {name} batch {batch}: {point.images_per_s:.0f} img/s, p50 {point.p50_ms:.3f} ms")
            results[name].append(point)
    return results


def best(points: list[Point]) -> Point:
    return max(points, key=lambda p: p.images_per_s)


def session_line(runtimes: dict[str, ModelRuntime], threads: int) -> str:
    runtime = next(iter(runtimes.values()))
    return (f"Sessions: `service.core.runtime.ModelRuntime` (the service's own construction): providers "
            f"{runtime.providers}, intra-op threads {threads or default_threads()}"
            f"{' (the service default: all CPUs on 1-2, else min(8, CPUs - 1))' if not threads else ''}, "
            "inter-op 1, ORT_ENABLE_ALL, "
            "sequential, no spinning; timed through `ModelRuntime.run` (what the batcher calls)")


def markdown_table(results: dict[str, list[Point]]) -> list[str]:
    names = list(results)
    lines = ["| batch | " + " | ".join(f"{n}: img/s | {n}: ms per batch (p50 / p95)" for n in names) + " |",
             "|---" * (1 + 2 * len(names)) + "|"]
    batches = [p.batch for p in results[names[0]]]
    for i, batch in enumerate(batches):
        cells = []
        for n in names:
            p = results[n][i]
            cells += [f"{p.images_per_s:.0f}", f"{p.p50_ms:.3f} / {p.p95_ms:.3f}"]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines.append("")
    for n in names:
        b = best(results[n])
        lines.append(f"- {n}: best {b.images_per_s:.0f} img/s at batch {b.batch}; batch 1: "
                     f"{results[n][0].images_per_s:.0f} img/s, {results[n][0].p50_ms:.3f} ms")
    return lines


def parse_batches(text: str) -> list[int]:
    return parse_ints(text, "batch sizes must be positive integers")


def main(argv: list[str] | None = None) -> int:
    defaults = Settings.model_fields
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("models"))
    parser.add_argument("--models", default=None, help="comma-separated bundle names (default: every valid bundle)")
    parser.add_argument("--batches", type=parse_batches, default=parse_batches(DEFAULT_BATCHES))
    parser.add_argument("--seconds", type=float, default=2.0, help="time per (model, batch) point")
    parser.add_argument("--min-runs", type=int, default=5)
    parser.add_argument("--providers", default=defaults["providers"].default, choices=["auto", "cuda", "cpu"])
    parser.add_argument("--intra-op-threads", type=int, default=defaults["intra_op_threads"].default,
                        help="0 = the service default")
    parser.add_argument("--pause-pid", type=int, action="append", default=[],
                        help="SIGSTOP this process (and its children) while measuring; SIGCONT afterwards")
    parser.add_argument("--out", help="also write the Markdown section to this file")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    names = args.models.split(",") if args.models else None
    runtimes = load_runtimes(args.model_repository, names, args.providers, args.intra_op_threads)
    with Paused(args.pause_pid):
        results = limit_table(runtimes, args.batches, args.seconds, args.min_runs)
    lines = header("In-process ONNX Runtime throughput (the limit, no HTTP)", extra=[
        session_line(runtimes, args.intra_op_threads),
        f"Input: standard-normal float32 tensors; at least {args.seconds:g} s and {args.min_runs} calls per point"
        + (f"; paused PIDs {args.pause_pid} (SIGSTOP) while measuring" if args.pause_pid else ""),
    ])
    emit(lines + markdown_table(results), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
