"""Slow and idle clients: a request must arrive within ``read_timeout_s`` (408, connection closed),
an unused connection is closed, an idle keep-alive connection is closed, connections beyond
``max_connections`` get 503, and sixty trickling clients do not slow ``/healthz``."""

from __future__ import annotations

import json
import socket
import time

import pytest

from service.core.config import Settings
from tests.reliability.rel_support import SAMPLE, Probe, read_all, start, status_of

READ_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 70
TRICKLE = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start(tmp_path_factory.mktemp("slow"), read_timeout_s=READ_TIMEOUT_S, keep_alive_timeout_s=1,
               max_connections=MAX_CONNECTIONS) as proc:
        yield proc


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def test_the_default_cuts_a_trickle_within_30_seconds():
    assert Settings().read_timeout_s <= 30.0


def trickle(port: int, head: bytes, until: float) -> tuple[bytes, float]:
    """Send ``head`` then one byte every 0.2 s; returns (the answer, seconds from the first byte)."""
    with connect(port) as s:
        start = time.monotonic()
        s.sendall(head)
        s.settimeout(0.2)
        answer = b""
        while time.monotonic() - start < until:
            try:
                s.sendall(b"x")
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if not chunk:
                break
            answer += chunk
        s.settimeout(5)
        answer += read_all(s)
        return answer, time.monotonic() - start


@pytest.mark.parametrize("head", [TRICKLE, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty"], ids=["body", "headers"])
def test_a_trickling_request_gets_408_and_is_closed(server, head):
    answer, took = trickle(server.port, head, until=READ_TIMEOUT_S + 5)
    assert status_of(answer) == 408, answer[:300]
    assert READ_TIMEOUT_S - 0.35 <= took <= READ_TIMEOUT_S + 2.0, took  # cut in (timeout - 0.25 s, timeout]
    head_part, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head_part.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "read_timeout" and error["request_id"]


def test_an_unused_connection_is_closed_without_an_answer(server):
    with connect(server.port) as s:
        start = time.monotonic()
        assert s.recv(100) == b""
        assert READ_TIMEOUT_S - 0.35 <= time.monotonic() - start <= READ_TIMEOUT_S + 2.0


def test_an_idle_keep_alive_connection_is_closed(server):
    request = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(SAMPLE)) + SAMPLE
    with connect(server.port) as s:
        s.sendall(request)
        assert status_of(read_all(s)) == 200
        start = time.monotonic()
        assert s.recv(100) == b""  # closed by the server after keep_alive_timeout_s
        assert 0.9 <= time.monotonic() - start <= 2.5


def test_sixty_trickling_clients_neither_slow_probes_nor_block_the_cap(server):
    holders: list[socket.socket] = []
    try:
        with Probe(server.port) as probe:
            for _ in range(60):
                s = connect(server.port)
                s.sendall(TRICKLE[:-10])
                holders.append(s)
            time.sleep(1.0)
        # the cap: 60 holders + this test's connections; beyond MAX_CONNECTIONS a request gets 503 and a close
        extra = [connect(server.port) for _ in range(MAX_CONNECTIONS - 60)]
        with connect(server.port) as over:  # a probe is answered beyond the cap (#25) ...
            over.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert status_of(read_all(over)) == 200
        with connect(server.port) as over:  # ... any other request is not
            over.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = read_all(over)
        assert status_of(answer) == 503, answer[:300]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"retry-after: 1" in head.lower() and json.loads(body)["error"]["code"] == "too_many_connections"
        for s in extra:
            s.close()
    finally:
        for s in holders:
            s.close()
    print(f"\n60 trickling clients: probe worst {probe.worst * 1000:.1f} ms over {probe.count} polls")
    assert not probe.failures and probe.worst < 0.5
    # once they are gone, a new connection is served
    deadline = time.monotonic() + 5
    while True:
        with connect(server.port) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if status_of(read_all(s)) == 200:
                break
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_every_trickler_was_cut(server):
    """After the 60 holders closed, the metrics count the read timeouts and refusals by reason."""
    with connect(server.port) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        text = read_all(s).decode()
    assert 'rbn_serve_rejected_requests_total{reason="read_timeout",route="unmatched"}' in text
    assert 'rbn_serve_rejected_requests_total{reason="too_many_connections",route="unmatched"}' in text

