"""The hostile classes of issue #25 against checkouts of this service, one after the other: per class
the answer (status; bytes: of the answer, or for the head floods those sent before the server answered or
closed; seconds), the server's RSS growth and the worst wait of a /healthz probe
polling every 20 ms from its own process. Each checkout runs ``python -m service serve`` on the
shipped bundles with default settings (``git worktree add /tmp/before <commit>`` for a "before").

    python bench/hostile_traffic.py --checkout before=/tmp/before --checkout after=. [--seconds 5]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server_layer import HOSTILE, rss_mb, stream  # noqa: E402
from harness.clients import Probe  # noqa: E402
from harness.procs import RbnServe  # noqa: E402

RBN = "fmnist-resnet20-rbn"


def _segments_flood(scans: int = 20_000, side: int = 1024) -> bytes:
    """A smooth progressive JPEG whose last scan is repeated ``scans`` times (tests/reliability/hostile.py's)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (100, 120, 140)).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    eoi = data.rindex(b"\xff\xd9")
    last = data.rindex(b"\xff\xda")
    return data[:eoi] + data[last:eoi] * scans + data[eoi:]


def _ztxt_png(chunks: int = 15, inflated: int = 1_000_000) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 28, 28, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + bytes(28) for _ in range(28)))
    payload = zlib.compress(b"a" * inflated, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + b"".join(chunk(b"zTXt", b"k%d\0\0" % i + payload) for i in range(chunks))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _post(port: int, path: str, body: bytes, content_type: str) -> tuple[int, int, float]:
    """(status, answer bytes, seconds)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + body)
        chunks = []
        while chunk := s.recv(1 << 20):
            chunks.append(chunk)
    answer = b"".join(chunks)
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0
    return status, len(answer), time.monotonic() - started


def bodies() -> dict[str, tuple[str, bytes, str]]:
    one = {"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.1] * 784}
    amplify = json.dumps({"inputs": [one], "outputs": [{"name": "rbn_channel_stats"}] * 4000}).encode()
    huge = json.dumps({"inputs": [{**one, "data": [3.4e38] * 784}]}).encode()
    v2 = f"/v2/models/{RBN}/infer"
    return {
        "OIP: one output named 4000 times": (v2, amplify, "application/json"),
        "OIP: FP32 values of 3.4e38": (v2, huge, "application/json"),
        "JPEG: 20 000 repeated progressive scans": ("/predict", _segments_flood(), "image/jpeg"),
        "PNG: 15 zTXt of 1 MB (inline size)": ("/predict", _ztxt_png(), "image/png"),
    }


def measure(name: str, root: Path, seconds: float, logs: Path) -> list[dict]:
    server = RbnServe(logs / f"{name}.log", root=root, model_repository=root / "models").wait_ready(120)
    rows = []
    try:
        for cls, (head, piece) in HOSTILE.items():
            def flood(h=head, p=piece) -> tuple[int, int, float]:
                status, took, sent = stream(server.port, h, p, seconds)
                return status, sent, took  # the bytes sent before the server answered or closed

            rows.append(_with_probe(server, cls, flood))
        for cls, (path, body, ctype) in bodies().items():
            rows.append(_with_probe(server, cls, lambda p=path, b=body, c=ctype: _post(server.port, p, b, c),
                                    len(body)))
    finally:
        server.stop()
    for row in rows:
        row["checkout"] = name
        print(json.dumps(row), flush=True)
    return rows


def _with_probe(server, cls: str, action, sent: int | None = None) -> dict:
    with Probe(server.port) as probe:
        before = rss_mb(server.pid)
        result = action()
        peak = rss_mb(server.pid)
        time.sleep(0.3)
    status, size, took = result
    return {"class": cls, "status": status, "bytes": size, "request_bytes": sent, "seconds": round(took, 3),
            "rss_growth_mb": round(peak - before, 1),
            "worst_healthz_ms": round(1000 * probe.worst, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", action="append", required=True, help="name=path")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    np.seterr(all="ignore")
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.checkout:
            name, _, path = spec.partition("=")
            measure(name, Path(path).resolve(), args.seconds, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
