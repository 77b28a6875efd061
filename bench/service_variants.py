"""Service configurations (or code versions) side by side: throughput, p99, and where the CPU goes.

For each round and each variant, in turn: start the service with the variant's flags, warm up,
drive it with wrk (raw-body POST of one sample image to ``--route``) for a fixed time while reading
the CPU time of its threads from /proc, stop it. Prints a Markdown table of medians over the
rounds: req/s, p99, CPU of the event-loop thread per request (the process's main thread; with
``--workers``, every worker's main thread summed) and the CPU of all its other threads (ONNX
Runtime's workers, the decode threads and decode processes) in cores. Interleaving the variants, in an order that
rotates from round to round, is what makes a comparison on a noisy machine fair.

    python bench/service_variants.py --variant "1 thread=--intra-op-threads 1" \\
        --variant "2 threads=--intra-op-threads 2" --concurrency 4,16,64 --rounds 2

A variant's flags may start with ``@DIR``: the service then runs from that checkout (e.g. a
``git worktree`` of an older commit), which is how code versions are compared.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SAMPLE_PNG, process_tree, emit, exit_on_sigterm, header, parse_ints, progress  # noqa: E402
from bench.serve_bench import start_service  # noqa: E402
from harness.wrk import Wrk, wrk_version  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    name: str
    root: Path
    flags: list[str]


@dataclass(frozen=True)
class Sample:
    per_s: float
    p99_ms: float
    loop_ms_per_request: float
    other_threads_cores: float
    errors: int


def parse_variant(text: str) -> Variant:
    name, sep, rest = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=FLAGS, got {text!r}")
    flags = shlex.split(rest)
    root = ROOT
    if flags and flags[0].startswith("@"):
        root = Path(flags.pop(0)[1:]).resolve()
        if not (root / "service" / "cli.py").is_file():
            raise argparse.ArgumentTypeError(f"{root} holds no service/cli.py")
    return Variant(name.strip(), root, flags)


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid`` and of its child processes (``--workers``)."""
    times = {}
    for process in process_tree(pid):
        try:
            tasks = list(Path(f"/proc/{process}/task").iterdir())
        except FileNotFoundError:
            continue  # a process that just ended
        for task in tasks:
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that just ended
            times[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return times


def _decode_process(pid: int) -> bool:
    """The forkserver of the decode processes, or one of them (forked from it: the same command line)."""
    try:
        return b"multiprocessing.forkserver" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def measure(variant: Variant, wrk: Wrk, repository: Path, route: str, concurrency: int, warmup: int, duration: int,
            log_dir: Path, timeout: float) -> Sample:
    server = start_service(repository, "cpu", 0, variant.flags, log_dir, timeout, root=variant.root)
    try:
        url = server.url + route
        if warmup > 0:
            wrk.run(url, concurrency, warmup)
        before, t0 = thread_cpu_s(server.pid), time.monotonic()
        load = wrk.run(url, concurrency, duration)
        after, wall = thread_cpu_s(server.pid), time.monotonic() - t0
        processes = process_tree(server.pid)
    finally:
        server.stop()
    used = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    # the event loops: the main thread of each server process (one, or each worker's; a supervisor's is idle);
    # the decode processes (the forkserver's children, service.core.decodeproc) decode on their main thread,
    # which counts with the other threads
    loop = sum(used.pop(process, 0.0) for process in processes if not _decode_process(process))
    return Sample(load.per_s, load.p99_ms, 1000 * loop / max(1, load.requests), sum(used.values()) / wall,
                  load.errors + load.non_2xx)


def markdown(variants: list[Variant], levels: list[int], results: dict[tuple[str, int], list[Sample]], rounds: int) -> list[str]:
    lines = ["| variant | concurrency | req/s | p99 ms | event-loop CPU per request (ms) | other threads (cores) | errors |",
             "|---|---|---|---|---|---|---|"]
    for level in levels:
        for v in variants:
            samples = results[(v.name, level)]

            def med(field: str, samples: list[Sample] = samples) -> float:
                return statistics.median(getattr(s, field) for s in samples)

            lines.append(f"| {v.name} | {level} | {med('per_s'):.0f} | {med('p99_ms'):.1f} | "
                         f"{med('loop_ms_per_request'):.3f} | {med('other_threads_cores'):.2f} | "
                         f"{sum(s.errors for s in samples)} |")
    lines.append("")
    lines.append(f"Medians over {rounds} interleaved round(s); per round, each variant ran in turn at each level "
                 "(the order rotating from round to round).")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", type=parse_variant, action="append", required=True,
                        help="NAME=FLAGS for `rbn-serve serve` (FLAGS may start with @DIR: run from that checkout)")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "models")
    parser.add_argument("--route", default="/predict", help="path and query POSTed to, e.g. /ab or /predict?model=NAME")
    parser.add_argument("--concurrency", type=parse_ints, default=[16])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--body", type=Path, default=SAMPLE_PNG)
    parser.add_argument("--wrk", default="wrk")
    parser.add_argument("--ready-timeout", type=float, default=120.0)
    parser.add_argument("--out", help="also write the Markdown here")
    args = parser.parse_args(argv)
    exit_on_sigterm()
    names = [v.name for v in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"variant names must differ: {names}")
    wrk = Wrk(args.wrk, 1, args.body, "image/png")
    results: dict[tuple[str, int], list[Sample]] = {(v.name, c): [] for v in args.variant for c in args.concurrency}
    with tempfile.TemporaryDirectory(prefix="rbn-variants-") as tmp:
        for r in range(args.rounds):
            for level in args.concurrency:
                shift = r % len(args.variant)
                for v in args.variant[shift:] + args.variant[:shift]:
                    sample = measure(v, wrk, args.model_repository.resolve(), args.route, level, args.warmup,
                                     args.duration, Path(tmp), args.ready_timeout)
                    results[(v.name, level)].append(sample)
                    progress(f"round {r + 1} c={level} {v.name}: {sample.per_s:.0f} req/s, loop "
                             f"{sample.loop_ms_per_request:.3f} ms/req, other threads {sample.other_threads_cores:.2f} cores")
    flags = "; ".join(f"{v.name}: `{' '.join(v.flags) or '(defaults)'}`{f' from {v.root}' if v.root != ROOT else ''}"
                      for v in args.variant)
    lines = header("Service variants side by side", packages=("onnxruntime", "fastapi", "uvicorn"),
                   extra=[(f"Client: {wrk_version(args.wrk)}, `-t1`, raw-body POST of `{args.body.name}` to `{args.route}`; "
                           f"{args.warmup} s warm-up then {args.duration} s per run; loopback"),
                          f"Variants: {flags}"])
    emit(lines + markdown(args.variant, args.concurrency, results, args.rounds), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
