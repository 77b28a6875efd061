"""Raw HTTP clients that the hostile-traffic tests and benchmarks share: a request head streamed in pieces,
an answer read whole from a socket, and a ``/healthz`` probe in a process of its own.

Standard library only (see ``harness.procs``).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

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
    process (so the caller's load does not delay it); after the ``with`` block: ``worst`` (the longest
    wait for an answer, seconds), ``p99``, ``count`` and ``failures`` (answers other than 200, errors)."""

    def __init__(self, port: int, interval: float = 0.02) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", PROBE_SCRIPT, "127.0.0.1", str(port), str(interval)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.worst = self.p99 = 0.0
        self.count = 0
        self.failures: list[str] = []

    def __enter__(self) -> Probe:
        time.sleep(0.3)  # the probe's interpreter starts
        return self

    def __exit__(self, *exc) -> None:
        out, _ = self._proc.communicate("", timeout=30)
        result = json.loads(out)
        self.worst, self.p99, self.count, self.failures = result["worst"], result["p99"], result["count"], result["failures"]


def read_all(s: socket.socket) -> bytes:
    """Read until the answer is complete (by its Content-Length), the server closes, or the socket's timeout."""
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
    """The status code of a raw HTTP/1.1 answer; 0 when there is none."""
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def stream_head(port: int, head: bytes, piece: bytes, seconds: float, pause: float = 0.0) -> tuple[bytes, float, int]:
    """Send ``head`` then ``piece`` over and over for up to ``seconds`` (or until the server answers or
    closes); returns (the answer, seconds until it came, bytes sent)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setblocking(False)
        start, sent, answer = time.monotonic(), 0, b""
        data = head
        while time.monotonic() - start < seconds:
            try:
                sent += s.send(data or piece)
                data = b""
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
            try:
                chunk = s.recv(65536)
                if not chunk:
                    break
                answer += chunk
                break
            except BlockingIOError:
                pass
            except ConnectionResetError:
                break
            if pause:
                time.sleep(pause)
        took = time.monotonic() - start
        s.setblocking(True)
        s.settimeout(5)
        answer += read_all(s)
        return answer, took, sent
