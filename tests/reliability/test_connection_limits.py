"""Connection-level limits of issue #25: probes are never refused by the connection cap, and an answer
the client does not take within ``write_timeout_s`` is dropped (its memory freed, the connection
closed) instead of being held until the client leaves."""

from __future__ import annotations

import json
import socket
import time

import pytest

from harness.procs import rss_bytes
from tests.reliability.rel_support import RBN, get, read_all, start, status_of

MAX_CONNECTIONS = 4
WRITE_TIMEOUT_S = 2.0
IMAGES = 1024  # an answer of ~10 MB: more than the kernel's send buffer (4 MB at most) and the client's window


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("connection-limits"), max_connections=MAX_CONNECTIONS,
               write_timeout_s=WRITE_TIMEOUT_S, max_queue_size=IMAGES) as proc:
        yield proc


def ask(port: int, path: str, method: str = "GET", body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
                  .encode() + body)
        return read_all(s)


def test_probes_are_answered_beyond_the_connection_cap(server):
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(MAX_CONNECTIONS + 2)]
    try:
        time.sleep(0.3)  # accepted
        for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"):
            assert status_of(ask(server.port, path)) == 200, path
        refused = ask(server.port, "/v2")
        assert status_of(refused) == 503
        assert json.loads(refused.partition(b"\r\n\r\n")[2])["error"] == (
            f"the server holds its maximum of {MAX_CONNECTIONS} connections; retry later")
    finally:
        for s in idle:
            s.close()


def rss_mb(pid: int) -> float:
    return rss_bytes(pid) / 2**20


def test_an_answer_nobody_reads_is_dropped_within_the_write_deadline(server):
    body = json.dumps({"inputs": [{"name": "input", "shape": [IMAGES, 1, 28, 28], "datatype": "FP32",
                                   "data": [0.1] * (IMAGES * 784)}]}).encode()
    head = (f"POST /v2/models/{RBN}/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a client that takes almost nothing
    s.settimeout(10)
    s.connect(("127.0.0.1", server.port))
    try:
        s.sendall(head + body)
        time.sleep(WRITE_TIMEOUT_S + 3.0)  # the answer is computed, stuck in the buffers, and dropped
        deadline = time.monotonic() + 10
        received, closed = b"", False
        while time.monotonic() < deadline:  # now read what was left: the connection must end short of the answer
            try:
                chunk = s.recv(1 << 20)
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
    finally:
        s.close()
    head_end = received.find(b"\r\n\r\n")
    declared = int(received[:head_end].lower().split(b"content-length: ")[1].split(b"\r\n")[0]) if head_end > 0 else None
    print(f"\nreceived {len(received)} bytes of an answer of {declared} bytes; closed: {closed}")
    assert closed
    assert declared is None or len(received) - head_end - 4 < declared
    status, metrics = get(server.url, "/metrics")
    assert b'reason="write_timeout"' in metrics
