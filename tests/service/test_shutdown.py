"""SIGTERM: readiness turns false, in-flight and queued requests finish, then the process exits 0."""

from __future__ import annotations

import json
import signal
import socket
import time

import httpx
import numpy as np
from svc_support import RBN, ServiceProcess, encode


def send_raw(port: int, request: bytes) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(request)
    return s


def read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    chunks = []
    while True:
        chunk = s.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    s.close()
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


def http_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_sigterm_drains(bundle_repo, tmp_path):
    server = ServiceProcess(bundle_repo, tmp_path / "server.log", drain_delay_s=0.3, max_batch_size=32,
                            max_queue_size=16384, max_body_bytes=64 * 1024 * 1024).wait_ready()
    try:
        # a large OIP batch: 256 chunks of 32 queue up and outlast the drain delay
        n = 8192
        x = np.random.default_rng(0).standard_normal((n, 1, 28, 28)).astype("<f4")
        header = json.dumps({"inputs": [{"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32",
                                         "parameters": {"binary_data_size": x.nbytes}}],
                             "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()
        big = send_raw(server.port, http_request(f"/v2/models/{RBN}/infer", header + x.tobytes(),
                                                 {"Inference-Header-Content-Length": str(len(header))}))
        image = encode(np.full((28, 28), 90, np.uint8))
        small = [send_raw(server.port, http_request("/predict", image, {"Content-Type": "image/png"})) for _ in range(8)]
        time.sleep(0.2)  # the server has read the requests

        server.proc.send_signal(signal.SIGTERM)
        ready = httpx.get(server.url + "/readyz", timeout=10)  # still accepting during the drain delay
        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert httpx.get(server.url + "/healthz", timeout=10).status_code == 200

        status, headers, body = read_response(big)
        assert status == 200, body[:300]
        length = int(headers["inference-header-content-length"])
        assert json.loads(body[:length])["outputs"][0]["shape"] == [n, 10]
        assert len(body) == length + n * 10 * 4
        for s in small:
            status, _, body = read_response(s)
            assert status == 200, body
            assert json.loads(body)["predictions"][0]["label"]
        assert server.proc.wait(30) == 0
    finally:
        server.stop()
    log = server.log()
    assert "draining" in log
    assert "Waiting for connections to close" in log  # the big request was still running when the listener closed
