"""A small closed-loop HTTP load generator (asyncio + httpx, several processes) for machines without wrk.

``concurrency`` connections in all, split over ``processes`` processes (each an asyncio loop with
one keep-alive connection per worker); every worker POSTs the body back to back. All processes
start together, warm up, then count the requests that complete inside the measured window.

    python bench/httpload.py URL --body FILE [--concurrency 64] [--duration 10] [--warmup 3] [--processes 4]

Prints one JSON line: requests, seconds, req_per_s, errors, p50_ms, p95_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np


async def _load(url: str, body: bytes, headers: dict, workers: int, t_start: float, warmup: float,
                duration: float, timeout: float) -> tuple[int, int, list[float]]:
    import httpx

    record_from, stop_at = t_start + warmup, t_start + warmup + duration
    latencies: list[float] = []
    errors = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.time() < stop_at:
            t0 = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok = False
            t1 = time.perf_counter()
            if record_from <= time.time() <= stop_at:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors += 1

    limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        await asyncio.sleep(max(0.0, t_start - time.time()))
        await asyncio.wait_for(asyncio.gather(*(worker(client) for _ in range(workers))),
                               warmup + duration + timeout + 5 + max(0.0, t_start - time.time()))
    return len(latencies), errors, latencies


def _process(url: str, body: bytes, headers: dict, workers: int, t_start: float, warmup: float, duration: float,
             timeout: float) -> tuple[int, int, list[float]]:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(_load(url, body, headers, workers, t_start, warmup, duration, timeout))


def run(url: str, body: bytes, content_type: str = "image/png", concurrency: int = 64, duration: float = 10.0,
        warmup: float = 3.0, processes: int = 4, timeout: float = 30.0) -> dict:
    """Drive ``url`` and return the summary (see the module docstring)."""
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    t_start = time.time() + 1.0 + 0.5 * processes  # time for the processes to start and import httpx
    headers = {"Content-Type": content_type}
    jobs = [(url, body, headers, n, t_start, warmup, duration, timeout) for n in shares]
    if processes == 1:
        results = [_process(*jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            results = pool.starmap(_process, jobs)
    count = sum(r[0] for r in results)
    latencies = np.concatenate([np.asarray(r[2], dtype=np.float64) for r in results]) if count else np.zeros(0)
    p50, p95, p99 = (np.percentile(latencies, [50, 95, 99]) * 1e3).tolist() if count else [float("nan")] * 3
    return {"requests": count, "seconds": duration, "req_per_s": count / duration, "errors": sum(r[1] for r in results),
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "concurrency": concurrency, "processes": processes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="image/png")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=4)
    args = parser.parse_args(argv)
    result = run(args.url, args.body.read_bytes(), args.content_type, args.concurrency, args.duration, args.warmup,
                 args.processes)
    print(json.dumps(result))
    return 0 if result["requests"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
