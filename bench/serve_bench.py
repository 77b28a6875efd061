"""This service against the in-process limit and a naive server: same model, same machine, same client.

In one run: (1) the limit, in-process ONNX Runtime through the service's own session construction
(bench/inprocess.py) for the served model and its baseline; (2) the naive server
(bench/naive_server.py under uvicorn); (3) this service (``python -m service.cli serve``). Both
servers run as subprocesses on 127.0.0.1 ephemeral ports and are driven by Debian's ``wrk`` with
harness/wrk_post.lua (raw-body POST of one sample image) at fixed concurrency levels, each after a
warm-up, for a fixed duration. Also: ``/ab`` and the BN baseline (``/predict?model=...``) through
the service, and the service's resident memory after N1 vs N2 requests. Prints a Markdown section.
Every subprocess has a timeout; the servers are stopped in ``finally`` and die with this process.

    python bench/serve_bench.py [--model-repository models] [--concurrency 1,4,16,64]
        [--warmup 3] [--duration 10] [--rss-requests 1000,50000] [--pause-pid PID]
        [--service-arg=--max-batch-size=32 ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    ROOT,
    SAMPLE_PNG,
    Paused,
    ServerProcess,
    Service,
    emit,
    exit_on_sigterm,
    free_port,
    header,
    http,
    parse_ints,
    progress,
    python_env,
)
from bench.inprocess import DEFAULT_BATCHES, Point, best, limit_table, load_runtimes, parse_batches  # noqa: E402
from bench.inprocess import markdown_table as limit_markdown  # noqa: E402
from service.core.config import Settings  # noqa: E402
from service.core.model import choose_primary  # noqa: E402
from service.core.repository import scan  # noqa: E402
from service.core.runtime import default_threads  # noqa: E402
from harness.wrk import Load, Wrk, wrk_version  # noqa: E402

WRK_COUNT = ROOT / "bench" / "wrk_count.lua"
CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
                 ".bmp": "image/bmp", ".gif": "image/gif", ".tif": "image/tiff", ".tiff": "image/tiff"}


@dataclass(frozen=True)
class Row:
    server: str  # naive | service
    route: str
    model: str
    concurrency: int
    load: Load
    limit: float | None  # the in-process img/s this row is compared with (None: no comparison)
    naive: float | None = None  # the naive server's req/s at this concurrency (service rows)


def drive(wrk: Wrk, url: str, concurrency: int, warmup: int, duration: int) -> Load:
    """A warm-up run (discarded), then the measured run."""
    if warmup > 0:
        wrk.run(url, concurrency, warmup)
    load = wrk.run(url, concurrency, duration)
    progress(f"{url} c={concurrency}: {load.per_s:.0f} req/s, p50 {load.p50_ms:.2f} ms, "
             f"p99 {load.p99_ms:.2f} ms, errors {load.errors}")
    return load


# --- the two servers ---------------------------------------------------------------------------
def start_naive(bundle_dir: Path, log_dir: Path, body: bytes, content_type: str, timeout: float) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "uvicorn", "bench.naive_server:app", "--host", "127.0.0.1", "--port", str(port),
            "--log-level", "warning", "--no-access-log"]
    server = ServerProcess("naive server", args, port, log_dir / "naive.log",
                           python_env({"RBN_BENCH_MODEL": str(bundle_dir.resolve())}))
    server.wait_until(lambda: http("POST", server.url + "/predict", body, content_type)[0] == 200, timeout)
    return server


def start_service(repository: Path, providers: str, threads: int, extra: list[str], log_dir: Path,
                  timeout: float, root: Path = ROOT) -> ServerProcess:
    """The service from ``root`` (this checkout by default); flags in ``extra`` win over the others."""
    server = Service(log_dir / "service.log", *extra, root=root, name="service", model_repository=repository.resolve(),
                     providers=providers, intra_op_threads=threads, log_level="warning")
    server.wait_until(lambda: http("GET", server.url + "/readyz")[0] == 200, timeout)
    return server


def check_answer(server: ServerProcess, path: str, body: bytes, content_type: str, key: str) -> None:
    status, data = http("POST", server.url + path, body, content_type, timeout=30)
    if status != 200 or key not in json.loads(data or b"{}"):
        raise RuntimeError(f"{server.name} {path}: status {status}: {data[:300]!r}")


def memory_check(wrk: Wrk, server: ServerProcess, counts: tuple[int, int], concurrency: int) -> list[tuple[int, float]]:
    """Resident memory of the service after the first N1 and the first N2 requests (VmRSS)."""
    url = server.url + "/predict"
    # wrk's threads stop at MAX_REQUESTS (bench/wrk_count.lua) but wrk itself exits only after -d
    # seconds, so each run's duration comes from the rate seen so far (first a 1 s run to learn it).
    first = wrk.run(url, concurrency, 1, WRK_COUNT, max_requests=counts[0])
    if first.errors:
        raise RuntimeError(f"memory check: {first.errors} errors in {first.requests} requests")
    done, rate = first.requests, max(first.per_s, 1.0)
    samples = []
    for target in counts:
        while done < target:
            todo = target - done
            load = wrk.run(url, concurrency, max(1, math.ceil(todo / rate * 1.1)), WRK_COUNT, max_requests=todo)
            if load.errors or load.requests == 0:
                raise RuntimeError(f"memory check: {load.errors} errors in {load.requests} requests")
            done += load.requests
            if load.requests < todo:  # slower than expected: learn the rate again
                rate = max(load.per_s, 1.0)
        samples.append((done, server.rss_mb()))
        progress(f"service RSS after {done} requests: {samples[-1][1]:.1f} MB")
    return samples


# --- report ------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def rows_markdown(rows: list[Row]) -> list[str]:
    lines = ["| server | route | model | concurrency | req/s | p50 ms | p95 ms | p99 ms | errors | / limit | service / naive |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ld = r.load
        over_limit = ld.per_s / r.limit if r.limit else None
        over_naive = ld.per_s / r.naive if r.naive else None
        lines.append(f"| {r.server} | {r.route} | {r.model} | {r.concurrency} | {ld.per_s:.0f} | {ld.p50_ms:.2f} | "
                     f"{ld.p95_ms:.2f} | {ld.p99_ms:.2f} | {ld.errors} | {fmt(over_limit)} | {fmt(over_naive)} |")
    return lines


def target_lines(rows: list[Row], limit: dict[str, list[Point]], model: str, rss: list[tuple[int, float]],
                 key_concurrency: int) -> list[str]:
    def find(server: str, route: str, c: int, name: str = model) -> Row | None:
        return next((r for r in rows if (r.server, r.route, r.concurrency, r.model) == (server, route, c, name)), None)

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    out = []
    svc, naive = find("service", "/predict", key_concurrency), find("naive", "/predict", key_concurrency)
    best_limit = best(limit[model])
    if svc is not None:
        ratio = svc.load.per_s / best_limit.images_per_s
        out.append(f"- Service / limit at concurrency {key_concurrency}: {ratio:.2f} "
                   f"(target ≥ 0.70: {verdict(ratio >= 0.7)})")
    if svc is not None and naive is not None and naive.load.per_s > 0:
        ratio = svc.load.per_s / naive.load.per_s
        out.append(f"- Service / naive at concurrency {key_concurrency}: {ratio:.2f} (target ≥ 2: {verdict(ratio >= 2)})")
    one = find("service", "/predict", 1)
    batch1 = next((p for p in limit[model] if p.batch == 1), None)
    if one is not None and batch1 is not None:
        bound = batch1.p50_ms + 2.0
        out.append(f"- p50 at concurrency 1: {one.load.p50_ms:.2f} ms vs in-process batch-1 p50 {batch1.p50_ms:.2f} ms "
                   f"+ 2 ms = {bound:.2f} ms ({verdict(one.load.p50_ms <= bound)})")
    if len(rss) == 2:
        growth = rss[1][1] - rss[0][1]
        out.append(f"- Resident memory: {rss[0][1]:.1f} MB after {rss[0][0]} requests, {rss[1][1]:.1f} MB after "
                   f"{rss[1][0]}: {growth:+.1f} MB (target ≤ 50 MB: {verdict(growth <= 50)})")
    return out


# --- main --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    defaults = Settings.model_fields
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-repository", type=Path, default=Path("models"))
    p.add_argument("--model", help="model to benchmark (default: the service's primary model, the first RBN bundle)")
    p.add_argument("--body", type=Path, default=SAMPLE_PNG, help="image POSTed as the raw body")
    p.add_argument("--concurrency", type=parse_ints, default=[1, 4, 16, 64], help="wrk connections (default 1,4,16,64)")
    p.add_argument("--extra-concurrency", type=parse_ints, default=None,
                   help="levels for /ab and the BN baseline through the service (default: 16, or the largest level)")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each measurement")
    p.add_argument("--duration", type=int, default=10, help="seconds per measurement")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (capped at the concurrency)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--rss-requests", type=parse_ints, default=[1000, 50000],
                   help="N1,N2: service RSS after the first N1 and the first N2 requests")
    p.add_argument("--rss-concurrency", type=int, default=16)
    p.add_argument("--limit-batches", type=parse_batches, default=parse_batches(DEFAULT_BATCHES))
    p.add_argument("--limit-seconds", type=float, default=2.0, help="seconds per in-process (model, batch) point")
    p.add_argument("--providers", default="cpu", choices=["auto", "cuda", "cpu"],
                   help="for the service and the in-process limit (default cpu)")
    p.add_argument("--intra-op-threads", type=int, default=defaults["intra_op_threads"].default,
                   help="for the service and the in-process limit; 0 = the service default")
    p.add_argument("--service-arg", action="append", default=[],
                   help="extra flag for `rbn-serve serve`, e.g. --service-arg=--max-batch-size=16 (repeatable)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--ready-timeout", type=float, default=180.0, help="seconds a server may take to become ready")
    p.add_argument("--pause-pid", type=int, action="append", default=[],
                   help="SIGSTOP this process (and its children) during the measurement, SIGCONT after (repeatable)")
    p.add_argument("--out", help="also write the Markdown section to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()
    if not Path(args.wrk).is_file():
        raise SystemExit(f"wrk not found at {args.wrk} (apt-get install wrk, or --wrk PATH)")
    if len(args.rss_requests) not in (0, 2) or (args.rss_requests and args.rss_requests[0] > args.rss_requests[1]):
        raise SystemExit("--rss-requests takes N1,N2 with N1 <= N2")
    body = args.body.read_bytes()
    content_type = CONTENT_TYPES.get(args.body.suffix.lower(), "application/octet-stream")
    key_c = 16 if 16 in args.concurrency else max(args.concurrency)
    extra_c = args.extra_concurrency or [key_c]

    found = scan(args.model_repository)
    bundles = {b.name: b for b in found.bundles}
    model = args.model or choose_primary({n: b.meta.norm for n, b in bundles.items()}, None)
    if model not in bundles:
        raise SystemExit(f"no valid bundle {model!r} in {args.model_repository} (valid: {sorted(bundles)})")
    baseline = bundles[model].meta.baseline if bundles[model].meta.baseline in bundles else None
    names = [model] + ([baseline] if baseline else [])
    wrk = Wrk(args.wrk, args.wrk_threads, args.body.resolve(), content_type)
    service_args = ["--primary-model", model, *args.service_arg]

    rows: list[Row] = []
    rss: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp, Paused(args.pause_pid):
        log_dir = Path(tmp)
        # (1) the limit, measured in this run, before any server is up
        runtimes = load_runtimes(args.model_repository, names, args.providers, args.intra_op_threads)
        limit = limit_table(runtimes, args.limit_batches, args.limit_seconds)
        providers_seen = next(iter(runtimes.values())).providers
        del runtimes
        gc.collect()
        best_of = {n: best(points).images_per_s for n, points in limit.items()}
        ab_limit = 1 / (1 / best_of[model] + 1 / best_of[baseline]) if baseline else None

        # (2) the naive server
        naive_rps: dict[int, float] = {}
        if not args.skip_naive:
            progress("starting the naive server")
            naive = start_naive(bundles[model].path, log_dir, body, content_type, args.ready_timeout)
            try:
                for c in args.concurrency:
                    load = drive(wrk, naive.url + "/predict", c, args.warmup, args.duration)
                    naive_rps[c] = load.per_s
                    rows.append(Row("naive", "/predict", model, c, load, best_of[model]))
            finally:
                naive.stop()

        # (3) this service
        progress("starting the service")
        service = start_service(args.model_repository, args.providers, args.intra_op_threads, service_args, log_dir,
                                args.ready_timeout)
        try:
            check_answer(service, "/predict", body, content_type, "predictions")
            if baseline:
                check_answer(service, f"/predict?model={baseline}", body, content_type, "predictions")
                check_answer(service, "/ab", body, content_type, "results")
            if args.rss_requests:
                rss = memory_check(wrk, service, tuple(args.rss_requests), args.rss_concurrency)
            for c in args.concurrency:
                load = drive(wrk, service.url + "/predict", c, args.warmup, args.duration)
                rows.append(Row("service", "/predict", model, c, load, best_of[model], naive_rps.get(c)))
            if baseline:
                for c in extra_c:
                    if c not in args.concurrency:  # RBN at this level too, next to BN
                        load = drive(wrk, service.url + "/predict", c, args.warmup, args.duration)
                        rows.append(Row("service", "/predict", model, c, load, best_of[model], naive_rps.get(c)))
                    load = drive(wrk, f"{service.url}/predict?model={baseline}", c, args.warmup, args.duration)
                    rows.append(Row("service", "/predict", baseline, c, load, best_of[baseline]))
                    load = drive(wrk, service.url + "/ab", c, args.warmup, args.duration)
                    rows.append(Row("service", "/ab", f"{model} + {baseline}", c, load, ab_limit))
        finally:
            service.stop()

    # --- the Markdown section ---
    threads = args.intra_op_threads or default_threads()
    service_flags = ["--providers", args.providers, "--intra-op-threads", str(args.intra_op_threads), *service_args]
    lines = header("Serving throughput: this service vs the in-process limit and a naive server",
                   packages=("onnxruntime", "numpy", "fastapi", "uvicorn", "uvloop", "httptools"), extra=[
        (f"Client: {wrk_version(args.wrk)}, `-t{args.wrk_threads}` (capped at the concurrency), `--latency`, "
         f"harness/wrk_post.lua POSTing `{shown_path(args.body)}` ({len(body)} bytes, {content_type}) as the raw body; "
         f"{args.warmup} s warm-up then {args.duration} s per row; loopback"),
        (f"Model: `{model}`" + (f", baseline `{baseline}`" if baseline else "") + f" from `{args.model_repository}`; "
         f"ONNX Runtime providers {providers_seen}, intra-op threads {threads} for the limit and the service"),
        (f"Service: `python -m service.cli serve` with defaults plus `{' '.join(service_flags)}`; naive server: "
         "bench/naive_server.py under `uvicorn` (one default ORT session, `session.run` per request)"),
    ] + ([f"Paused PIDs {args.pause_pid} (SIGSTOP) for the whole measurement"] if args.pause_pid else []))
    lines += ["### The limit: in-process, same session construction, measured in this run", ""]
    lines += limit_markdown(limit)
    lines += ["", "### Through HTTP (wrk)", "",
              ("`/ limit`: req/s over the best in-process img/s of that model over the batch sizes above (for "
               "`/ab`, over the serial pair limit 1/(1/L_rbn + 1/L_bn)); one image per request."), ""]
    lines += rows_markdown(rows)
    lines += [""]
    if baseline:
        for c in extra_c:
            r = next((x for x in rows if (x.server, x.route, x.model, x.concurrency) == ("service", "/predict", model, c)), None)
            b = next((x for x in rows if (x.server, x.route, x.model, x.concurrency) == ("service", "/predict", baseline, c)), None)
            if r and b and b.load.per_s > 0:
                first = limit[model][0].batch
                lines.append(f"- RBN / BN throughput through the service at concurrency {c}: {r.load.per_s / b.load.per_s:.2f} "
                             f"(in-process at each one's best batch: {best_of[model] / best_of[baseline]:.2f}; at batch "
                             f"{first}: {limit[model][0].images_per_s / limit[baseline][0].images_per_s:.2f})")
    lines += target_lines(rows, limit, model, rss, key_c)
    emit(lines, args.out)
    failed = [r for r in rows if r.load.errors]
    return 1 if failed else 0


def shown_path(path: Path) -> str:
    resolved = path.resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(path)


if __name__ == "__main__":
    sys.exit(main())
