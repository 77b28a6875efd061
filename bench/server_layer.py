"""The HTTP server layer, side by side (#25): this service under its own uvicorn protocol (the bounded
head, read deadline and connection cap of service/http/connections.py) against the same app under
granian (a Rust HTTP server with an ASGI interface), interleaved rounds on one machine.

Per server and round: the hostile head classes of issue #25 (an endless stream of header lines, one
header value without end and a URL without end, each streamed in small pieces for ``--hostile-s``
seconds on one connection) with a /healthz probe every 20 ms from its own process (worst wait) and the
server's RSS before and after (its whole process tree); then wrk at each concurrency on POST
/predict (one 28x28 sample PNG), with 1 and 2 workers. Granian must be importable: put it on
``--granian-path`` (``pip install --target DIR granian==2.8.9``), it is not a project dependency.

    python bench/server_layer.py [--rounds 2] [--concurrency 1,16,64] [--duration 8] [--workers 1,2]
        [--granian-path DIR] [--hostile-s 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import ROOT, SAMPLE_PNG, ServerProcess, free_port, header, parse_ints, python_env  # noqa: E402
from bench.serve_bench import drive  # noqa: E402
from harness.wrk import Wrk  # noqa: E402
from harness.clients import Probe, status_of, stream_head  # noqa: E402
from harness.procs import tree_rss_bytes  # noqa: E402

MODELS = ROOT / "models"

def granian_app():
    """The app as ``serve_worker`` builds it, for granian's ``--factory`` (settings from RBN_SERVE_*)."""
    from service.core.config import Settings
    from service.http.app import create_app

    app = create_app(Settings())
    app.state.service.prepare()
    return app


def rss_mb(pid: int) -> float:
    """Resident memory of the server's whole process tree, MB."""
    return tree_rss_bytes(pid) / 1e6


def start(kind: str, workers: int, logs: Path, granian_path: str | None) -> ServerProcess:
    port = free_port()
    env = python_env({"RBN_SERVE_MODEL_REPOSITORY": str(MODELS), "RBN_SERVE_PROVIDERS": "cpu"})
    if kind == "uvicorn":
        args = [sys.executable, "-m", "service", "serve", "--port", str(port), "--workers", str(workers)]
    else:
        env["PYTHONPATH"] = os.pathsep.join([granian_path or "", env["PYTHONPATH"]])
        args = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--host", "127.0.0.1",
                "--port", str(port), "--workers", str(workers), "--loop", "uvloop", "--no-ws",
                "bench.server_layer:granian_app"]
    return ServerProcess(kind, args, port, logs / f"{kind}-{workers}.log", env=env).wait_ready(120)


def stream(port: int, head: bytes, piece: bytes, seconds: float) -> tuple[int, float, int]:
    """``harness.clients.stream_head``, as (status or 0, seconds to the answer, bytes sent)."""
    answer, took, sent = stream_head(port, head, piece, seconds)
    return status_of(answer), took, sent


HOSTILE = {
    "header-line flood": (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-A: b\r\n" * 512),
    "endless header value": (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: ", b"a" * 64),
    "endless URL": (b"GET /healthz?q=", b"a" * 64),
}


def hostile(server: ServerProcess, seconds: float) -> dict[str, dict]:
    out = {}
    for name, (head, piece) in HOSTILE.items():
        with Probe(server.port) as probe:
            before = rss_mb(server.pid)
            status, took, sent = stream(server.port, head, piece, seconds)
            grown = rss_mb(server.pid) - before
        out[name] = {"status": status, "answer_s": took, "sent_mb": sent / 1e6, "rss_growth_mb": grown,
                     "worst_ms": 1000 * probe.worst, "failures": len(probe.failures)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--hostile-s", type=float, default=5.0)
    parser.add_argument("--granian-path", default=None)
    parser.add_argument("--kinds", default="uvicorn,granian")
    args = parser.parse_args()
    wrk = Wrk("wrk", 2, SAMPLE_PNG, "image/png")
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for workers in parse_ints(args.workers):
                for kind in args.kinds.split(","):
                    server = start(kind, workers, Path(tmp), args.granian_path)
                    try:
                        row = {"round": r, "kind": kind, "workers": workers, "rss_mb": rss_mb(server.pid)}
                        if workers == 1:
                            row["hostile"] = hostile(server, args.hostile_s)
                        for c in parse_ints(args.concurrency):
                            load = drive(wrk, server.url + "/predict", c, 2, args.duration)
                            row[f"c{c}"] = {"rps": load.requests / load.seconds, "p50_ms": load.p50_ms,
                                            "p99_ms": load.p99_ms, "errors": load.errors, "non_2xx": load.non_2xx}
                    finally:
                        server.stop()
                    print(json.dumps(row), flush=True)
                    results.append(row)
    print("\n".join(header("Server layer: uvicorn (bounded protocol) vs granian", ("uvicorn", "granian", "httptools"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
