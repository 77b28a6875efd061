"""Helpers for the reliability and access tests: a real server on the shipped bundles, configured
through harness.procs.RbnServe (settings as command-line flags, as every test and benchmark starts it), raw sockets, and a
``/healthz`` probe that records its worst wait. Imported as ``tests.reliability.rel_support``."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

from harness.procs import RbnServe, free_port, http  # noqa: F401 - the tests import them from here

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
RBN = "fmnist-resnet20-rbn"
SAMPLE = (ROOT / "samples" / "fashion-mnist" / "0_ankle-boot.png").read_bytes()
SAMPLE_LABEL = "Ankle boot"


class Server(RbnServe):
    """``python -m service serve`` on the shipped bundles (harness.procs.RbnServe: settings as flags)."""

    ready_timeout = 90.0
    poll_interval = 0.1
    stop_timeout = 30.0
    quote_lines = 60

    def __init__(self, tmp: Path, port: int | None = None, log_name: str = "server.log", **settings) -> None:
        super().__init__(tmp / log_name, port=port, **{"model_repository": MODELS, **settings})


def start(tmp: Path, **settings) -> Server:
    return Server(tmp, **settings).wait_ready()


def raw(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it or ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        return read_all(s)


def read_all(s: socket.socket) -> bytes:
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


PROBE_SCRIPT = r"""
import http.client, json, sys, threading, time
host, port, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
waits, failures = [], []
conn = http.client.HTTPConnection(host, port, timeout=10)
while not stop.is_set():
    start = time.perf_counter()
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        response.read()
        if response.status != 200:
            failures.append(str(response.status))
    except OSError as exc:
        failures.append(repr(exc))
        conn.close()
        conn = http.client.HTTPConnection(host, port, timeout=10)
    waits.append(time.perf_counter() - start)
    stop.wait(interval)
waits.sort()
print(json.dumps({"count": len(waits), "worst": waits[-1] if waits else 0.0,
                  "p99": waits[int(0.99 * (len(waits) - 1))] if waits else 0.0, "failures": failures[:20]}))
"""


class Probe:
    """Polls ``GET /healthz`` every ``interval`` seconds on one keep-alive connection, from its own
    process (so the test's load does not delay it); after the ``with`` block: ``worst`` (the longest
    wait for an answer, seconds), ``p99``, ``count`` and ``failures`` (answers other than 200)."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        import subprocess

        self._proc = subprocess.Popen([sys.executable, "-c", PROBE_SCRIPT, "127.0.0.1", str(port), str(interval)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.worst = self.p99 = 0.0
        self.count = 0
        self.failures: list[str] = []

    def __enter__(self) -> Probe:
        time.sleep(0.3)  # the probe's interpreter starts
        return self

    def __exit__(self, *exc) -> None:
        import json

        out, _ = self._proc.communicate("", timeout=30)
        result = json.loads(out)
        self.worst, self.p99, self.count, self.failures = result["worst"], result["p99"], result["count"], result["failures"]


def get(url: str, path: str, headers: dict | None = None, timeout: float = 30.0) -> tuple[int, bytes]:
    return http("GET", url + path, headers=headers, timeout=timeout)


__all__ = ["MODELS", "RBN", "SAMPLE", "Probe", "Server", "free_port", "get", "http", "raw", "start", "status_of"]
