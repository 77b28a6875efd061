"""A real model on real photos: this service against the in-process limit, same bundle, same JPEG, same machine.

Issue #24's question at 224 px: once the model and the JPEG decode dominate, how much of the machine's
in-process throughput does the service deliver at concurrency 16? For each photo (scikit-image's ``chelsea``
at its own size, and the same photo upscaled to a phone's 12 MP; ``bench/decode_224.py`` makes both):

- **in-process limit**: ``bench/peers/pipeline.py`` (``Model.open(bundle)``: the service's own decode and
  model, no server) in a loop: ``batch`` copies of
  the JPEG decoded and preprocessed by a pool of ``--decode-threads`` threads (Pillow releases the GIL while it
  decodes, so they run beside each other), then one ``Model.predict`` of the batch, the next batch decoding
  while this one runs; images per second at each batch size, the best one is the limit;
- **service**: ``rbn-serve serve`` on the same repository, driven by Debian's ``wrk`` posting the JPEG as the raw
  body of ``/predict?model=...`` at ``--concurrency`` connections after a warm-up.

The two alternate for ``--rounds`` rounds (limit, service, limit, service, ...); the table has the medians and
the ratio of the medians, and each round's ratio. Build the repository first (no torch is needed here):

    .venv/bin/rbn bundle --model efficientnet-lite0 --pair --repository /tmp/lite0-repo
    .venv/bin/python bench/photo_serving.py --repository /tmp/lite0-repo --rounds 3 --out /tmp/photo_serving.md
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import Service, emit, exit_on_sigterm, header, parse_ints, progress  # noqa: E402
from bench.decode_224 import jpeg  # noqa: E402
from bench.serve_bench import drive  # noqa: E402
from harness.wrk import Wrk  # noqa: E402
from bench.peers.pipeline import Pipeline  # noqa: E402


def in_process_rate(model: Pipeline, photo: bytes, batch: int, seconds: float, pool: ThreadPoolExecutor) -> float:
    """Images per second of decode + preprocess (the pool's threads at a time) and one ``predict`` per batch,
    pipelined: the next batch decodes while this one runs, as the service's decode pool and batcher overlap."""

    def submit() -> list:
        return [pool.submit(model.decode, photo) for _ in range(batch)]

    def one_batch(pending: list) -> list:
        pixels = np.stack([future.result() for future in pending])
        following = submit()
        model.core.predict(pixels, 5)
        return following

    pending = one_batch(submit())  # warm: the session's first run at this batch size
    runs, started = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - started < seconds:
        pending = one_batch(pending)
        runs += 1
    elapsed = time.perf_counter() - started
    for future in pending:
        future.result()
    return runs * batch / elapsed


def main(argv: list[str] | None = None) -> int:
    exit_on_sigterm()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repository", type=Path, required=True, help="model repository (rbn bundle --repository)")
    p.add_argument("--model", default="efficientnet-lite0-rbn")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batches", type=parse_ints, default=[1, 8, 16, 32], help="in-process batch sizes tried")
    p.add_argument("--decode-threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per in-process batch size")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--duration", type=int, default=15, help="seconds of each measured wrk run")
    p.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk")
    p.add_argument("--out")
    args = p.parse_args(argv)

    from skimage import data as skdata

    chelsea = skdata.chelsea()
    small, big = jpeg(chelsea, 90), jpeg(chelsea, 90, (4000, 3000))
    files = {f"chelsea 451x300 ({len(small) // 1024} KiB)": small, f"chelsea 12 MP ({len(big) // 1024} KiB)": big}

    model = Pipeline(args.repository / args.model, "cpu")
    rows = []
    with tempfile.TemporaryDirectory(prefix="photo-serving-") as tmp:
        work = Path(tmp)
        with Service(work / "server.log", model_repository=args.repository, primary_model=args.model).wait_ready() as service, \
                ThreadPoolExecutor(args.decode_threads) as pool:
            for label, data in files.items():
                body = work / "photo.jpg"
                body.write_bytes(data)
                wrk = Wrk(args.wrk, 1, body, "image/jpeg")
                url = f"{service.url}/predict?model={args.model}"
                limits, served = [], []
                for r in range(args.rounds):
                    rates = {b: in_process_rate(model, data, b, args.seconds, pool) for b in args.batches}
                    best = max(rates, key=rates.get)
                    limits.append((rates[best], best))
                    progress(f"{label} round {r + 1}: in-process " + ", ".join(f"b{b} {v:.1f}/s" for b, v in rates.items()))
                    load = drive(wrk, url, args.concurrency, args.warmup, args.duration)
                    if load.errors or load.non_2xx:
                        raise SystemExit(f"the service answered errors: {load}")
                    served.append(load)
                rows.append((label, limits, served))

    lines = header(f"A real model on photos: the service against the in-process limit ({args.model}, c={args.concurrency})",
                   ("onnxruntime", "numpy", "pillow"))
    lines += ["| photo | in-process limit, img/s (best batch) | service, req/s | service / limit | per round | service p50 / p99 |",
              "|---|---|---|---|---|---|"]
    for label, limits, served in rows:
        limit = statistics.median(v for v, _ in limits)
        rate = statistics.median(s.per_s for s in served)
        batches = sorted({b for _, b in limits})
        per_round = ", ".join(f"{s.per_s / v:.2f}" for (v, _), s in zip(limits, served))
        mid = sorted(served, key=lambda s: s.per_s)[len(served) // 2]
        lines.append(f"| {label} | {limit:.1f} (batch {'/'.join(map(str, batches))}) | {rate:.1f} | **{rate / limit:.2f}** | "
                     f"{per_round} | {mid.p50_ms:.0f} / {mid.p99_ms:.0f} ms |")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
