"""What decoding in killable worker processes costs (#25): the service with ``--decode-timeout-s 0``
(the pool's threads, unstoppable) against the default (worker processes), interleaved rounds, wrk at
one concurrency on POST /predict with (a) a shipped 28x28 sample (decoded on the event loop either way)
and (b) a 12-MP photo JPEG (decoded in the pool: a thread or a process).

    python bench/decode_isolation.py [--rounds 2] [--concurrency 16] [--duration 8]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
from pathlib import Path

from PIL import Image

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SAMPLE_PNG, header  # noqa: E402
from bench.serve_bench import drive  # noqa: E402
from harness.wrk import Wrk  # noqa: E402
from harness.procs import RbnServe  # noqa: E402


def photo_12mp(path: Path) -> Path:
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.chelsea()).resize((4000, 3000), Image.Resampling.BICUBIC).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        photo = photo_12mp(Path(tmp) / "photo.jpg")
        bodies = {"sample 28x28 PNG": (SAMPLE_PNG, "image/png"), "12-MP JPEG": (photo, "image/jpeg")}
        for r in range(args.rounds):
            for mode, timeout in (("threads", "0"), ("processes", "10")):
                server = RbnServe(Path(tmp) / f"{mode}.log", model_repository=ROOT / "models",
                                  decode_timeout_s=timeout).wait_ready(120)
                try:
                    for name, (body, ctype) in bodies.items():
                        load = drive(Wrk("wrk", 2, body, ctype), server.url + "/predict", args.concurrency, 2, args.duration)
                        print(json.dumps({"round": r, "mode": mode, "body": name, "rps": round(load.requests / load.seconds, 1),
                                          "p50_ms": load.p50_ms, "p99_ms": load.p99_ms, "errors": load.errors,
                                          "non_2xx": load.non_2xx}), flush=True)
                finally:
                    server.stop()
    print("\n".join(header("Decoding in threads vs killable processes")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
