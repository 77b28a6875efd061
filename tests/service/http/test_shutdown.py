"""SIGTERM, driven by events rather than sleeps: readiness turns false, the server keeps serving for the
drain delay, in-flight and queued requests finish after the listener closes, then the process exits 0.
A second SIGTERM, a SIGTERM while models load, and an inference that never returns are bounded too.

Every wait polls for the state it needs (the server has taken the requests, the listener is closed);
the one window left is the 2 s drain delay, in which a request that the test sends right after seeing
readiness turn false must arrive. A request held open by the client (its body not yet sent) is what
stays in flight across the listener's closing, on a fast machine as on a slow one.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest
from tests.service.svc_support import HANG, HANG_LIMIT, RBN, ServiceProcess, encode, write_slow_bundle

DRAIN_S = 2.0
INFER_ROUTES = r'route="(/predict|/v2/models/[^"]+/infer)"'
IMAGE = encode(np.full((28, 28), 90, np.uint8))


def poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def send_raw(port: int, request: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=120)
    s.sendall(request)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    chunks = []
    while chunk := s.recv(1 << 16):
        chunks.append(chunk)
    s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


def http_head(path: str, length: int, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    return http_head(path, len(body), headers) + body


def held_predict(port: int) -> socket.socket:
    """A /predict whose headers and half its body are sent: in flight until the test sends the rest."""
    return send_raw(port, http_head("/predict", len(IMAGE), {"Content-Type": "image/png"}) + IMAGE[: len(IMAGE) // 2])


def finish_held(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    s.sendall(IMAGE[len(IMAGE) // 2 :])
    return read_response(s)


def metric(url: str, name: str, having: str = "") -> float:
    """The sum of a metric's samples whose labels match the regular expression ``having`` (0 when none)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if (line.startswith(name + "{") or line.startswith(name + " ")) and re.search(having, line))


def readyz(url: str) -> tuple[int, str]:
    try:
        r = httpx.get(url + "/readyz", timeout=10)
    except httpx.HTTPError:
        return 0, ""
    return r.status_code, r.json().get("status", "")


def listener_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def oip_request(n: int) -> tuple[bytes, bytes]:
    x = np.random.default_rng(0).standard_normal((n, 1, 28, 28)).astype("<f4")
    header = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
    return header, http_request(f"/v2/models/{RBN}/infer", header + x.tobytes(),
                                {"Inference-Header-Content-Length": str(len(header))})


def test_sigterm_drains(bundle_repo, tmp_path):
    server = ServiceProcess(bundle_repo, tmp_path / "server.log", drain_delay_s=DRAIN_S, max_batch_size=32,
                            max_queue_size=4096, max_body_bytes=64 * 1024 * 1024).wait_ready()
    try:
        held = held_predict(server.port)
        n = 2048  # an OIP batch of 64 chunks of 32: queued in the batcher when the signal comes, or not yet
        _, big_request = oip_request(n)
        big = send_raw(server.port, big_request)
        small = [send_raw(server.port, http_request("/predict", IMAGE, {"Content-Type": "image/png"}))
                 for _ in range(8)]
        # The server has taken all ten requests: each is in flight or answered (this /metrics is in flight too).
        poll(lambda: metric(server.url, "rbn_serve_requests_in_flight") - 1
             + metric(server.url, "rbn_serve_requests_total", INFER_ROUTES) >= 10, 60, "the server to take the requests")

        server.proc.send_signal(signal.SIGTERM)
        poll(lambda: readyz(server.url) == (503, "draining"), DRAIN_S, "readiness to turn false")
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200
        # a request arriving during the drain delay is served (load balancers are still deregistering)
        during = httpx.post(server.url + "/predict", content=IMAGE, headers={"Content-Type": "image/png"}, timeout=60)
        assert during.status_code == 200, during.text
        assert during.json()["predictions"][0]["label"]

        # uvicorn closed the listener and now waits for the held request (its body is not complete yet)
        poll(lambda: "Waiting for connections to close" in server.log(), 30, "the listener to close")
        assert listener_closed(server.port)
        status, _, body = finish_held(held)
        assert status == 200, body
        status, headers, body = read_response(big)
        assert status == 200, body[:300]
        length = int(headers["inference-header-content-length"])
        assert json.loads(body[:length])["outputs"][0]["shape"] == [n, 10]
        assert len(body) == length + n * 10 * 4
        for s in small:
            status, _, body = read_response(s)
            assert status == 200, body
            assert json.loads(body)["predictions"][0]["label"]
        assert server.proc.wait(60) == 0
    finally:
        server.stop()
    assert "signal SIGTERM: draining (delay 2.0 s" in server.log()


def test_second_sigterm_waits_during_the_delay_and_forces_the_exit_after_it(bundle_repo, tmp_path):
    server = ServiceProcess(bundle_repo, tmp_path / "server.log", drain_delay_s=DRAIN_S).wait_ready()
    try:
        held = held_predict(server.port)
        poll(lambda: metric(server.url, "rbn_serve_requests_in_flight") >= 2, 30, "the held request")
        server.proc.send_signal(signal.SIGTERM)
        poll(lambda: readyz(server.url) == (503, "draining"), DRAIN_S, "readiness to turn false")
        server.proc.send_signal(signal.SIGTERM)  # during the delay: ignored, the drain goes on
        during = httpx.post(server.url + "/predict", content=IMAGE, headers={"Content-Type": "image/png"}, timeout=60)
        assert during.status_code == 200, during.text
        poll(lambda: "Waiting for connections to close" in server.log(), 30, "the listener to close")
        assert listener_closed(server.port) and server.proc.poll() is None  # waiting for the held request
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # after the delay: stop waiting for it
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 20  # not the 30 s graceful timeout
        held.close()
    finally:
        server.stop()
    assert server.log().count("signal SIGTERM: draining") == 1


@pytest.fixture()
def slow_repo(bundle_repo, tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    write_slow_bundle(repo, bundle_repo / RBN)
    return repo


def test_sigterm_while_models_load_exits_at_once(bundle_repo, tmp_path):
    """A warm-up that would take forever: SIGTERM stops the process without waiting for it."""
    repo = tmp_path / "models"
    repo.mkdir()
    write_slow_bundle(repo, bundle_repo / RBN, extra_iterations=2**62)
    server = ServiceProcess(repo, tmp_path / "server.log", graceful_timeout_s=2)
    try:
        poll(lambda: readyz(server.url) == (503, "loading"), 90, "the server to listen while loading")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 20
    finally:
        server.stop()
    assert "exiting with work still running: loading models" in server.log()


def test_an_inference_that_never_returns_does_not_hold_the_exit(slow_repo, tmp_path):
    """Shutdown is bounded by the graceful timeouts even when ONNX Runtime never comes back."""
    server = ServiceProcess(slow_repo, tmp_path / "server.log", graceful_timeout_s=1,
                            max_input_magnitude=HANG_LIMIT).wait_ready()
    try:
        body = {"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [HANG] + [0.0] * 783}]}
        hung = send_raw(server.port, http_request("/v2/models/test-slow/infer", json.dumps(body).encode(),
                                                  {"Content-Type": "application/json"}))
        poll(lambda: metric(server.url, "rbn_serve_batches_in_flight") == 1, 30, "the batch to run")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
        assert time.monotonic() - started < 20  # drain 0 s + up to 1 s for the request + 1 s for the batcher
        status, _, _ = read_response(hung)
        assert status == 500  # uvicorn cancelled it at the graceful timeout
    finally:
        server.stop()
    log = server.log()
    assert "a batch of 1 request(s) still ran after 1.0 s" in log
    assert "exiting with work still running: test-slow: 1 batch(es)" in log


def test_sigterm_waits_the_default_drain_delay_and_ctrl_c_does_not(bundle_repo, tmp_path):
    """No --drain-delay-s: SIGTERM (an orchestrator) keeps serving for the default delay with readiness false;
    SIGINT (Ctrl-C at a terminal) stops accepting at once and exits 0."""
    from service.core.config import Settings

    default = Settings.model_fields["drain_delay_s"].default
    assert default >= 3.0  # longer than the shipped HAProxy gateway's mark-down (tests/deploy/test_deploy_compose.py)
    term = ServiceProcess(bundle_repo, tmp_path / "term.log", drain_delay_s=None).wait_ready()
    try:
        started = time.monotonic()
        term.proc.send_signal(signal.SIGTERM)
        poll(lambda: readyz(term.url) == (503, "draining"), default, "readiness to turn false")
        during = httpx.post(term.url + "/predict", content=IMAGE, headers={"Content-Type": "image/png"}, timeout=60)
        assert during.status_code == 200, during.text  # still serving inside the delay
        assert term.proc.wait(60) == 0
        assert time.monotonic() - started >= default
    finally:
        term.stop()
    assert f"signal SIGTERM: draining (delay {default:.1f} s" in term.log()

    interrupted = ServiceProcess(bundle_repo, tmp_path / "int.log", drain_delay_s=None).wait_ready()
    try:
        started = time.monotonic()
        interrupted.proc.send_signal(signal.SIGINT)
        assert interrupted.proc.wait(60) == 0
        assert time.monotonic() - started < default
    finally:
        interrupted.stop()
    assert "signal SIGINT: draining (delay 0.0 s" in interrupted.log()
