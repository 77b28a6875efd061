"""Bad input gets a clear 4xx with our error form, never a 500, and the server stays up."""

from __future__ import annotations

import socket
import struct
import time
import zlib

import numpy as np
import pytest
from tests.service.svc_support import BN, MAX_BODY, MAX_FILES, MAX_PIXELS, RBN, encode


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds no pixel data (a decompression-bomb header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def error_of(r) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}, body
    assert body["error"]["request_id"] == r.headers["x-request-id"]
    return body["error"]


def post(client, data: bytes, content_type: str = "image/png", path: str = "/predict", **params):
    return client.post(path, content=data, headers={"Content-Type": content_type}, params=params)


GOOD = encode(np.zeros((28, 28), np.uint8))

CASES = {
    "empty body": (lambda c: post(c, b""), 422, "empty_body"),
    "garbage bytes": (lambda c: post(c, b"this is not an image at all" * 10), 415, "undecodable_image"),
    "truncated png": (lambda c: post(c, encode(np.random.default_rng(1).integers(0, 255, (64, 64), dtype=np.uint8))[:200]),
                      422, "corrupt_image"),
    "decompression bomb": (lambda c: post(c, png_header_only(30000, 30000)), 413, "too_many_pixels"),
    "too many pixels": (lambda c: post(c, png_header_only(5000, 5000)), 413, "too_many_pixels"),
    "body too large": (lambda c: post(c, b"\0" * (MAX_BODY + 1)), 413, "body_too_large"),
    "chunked body too large": (lambda c: c.post("/predict", content=iter([b"\0" * (MAX_BODY // 2)] * 3),
                                                headers={"Content-Type": "image/png"}), 413, "body_too_large"),
    "too many files": (lambda c: c.post("/predict", files=[("file", (f"{i}.png", GOOD, "image/png"))
                                                           for i in range(MAX_FILES + 1)]), 413, "too_many_files"),
    "unsupported content type": (lambda c: post(c, GOOD, "text/plain"), 415, "unsupported_media_type"),
    "no content type": (lambda c: c.post("/predict", content=GOOD), 415, "unsupported_media_type"),
    "multipart without file field": (lambda c: c.post("/predict", files=[("image", ("a.png", GOOD, "image/png"))]),
                                     422, "invalid_argument"),
    "multipart text value": (lambda c: c.post("/predict", data={"file": "hello"}, files=[("other", ("a.png", GOOD))]),
                             422, "invalid_argument"),
    "unknown model": (lambda c: post(c, GOOD, model="nope"), 404, "model_not_found"),
    "top_k zero": (lambda c: post(c, GOOD, top_k=0), 422, "invalid_argument"),
    "top_k not a number": (lambda c: post(c, GOOD, top_k="many"), 422, "invalid_argument"),
    "ab unknown corruption": (lambda c: post(c, GOOD, path="/ab", corruption="lava"), 422, "invalid_argument"),
    "ab severity out of range": (lambda c: post(c, GOOD, path="/ab", corruption="fog", severity=6), 422, "invalid_argument"),
    "ab severity without corruption": (lambda c: post(c, GOOD, path="/ab", severity=2), 422, "invalid_argument"),
    "ab unknown label": (lambda c: post(c, GOOD, path="/ab", label="Hat"), 422, "invalid_argument"),
    "ab label index out of range": (lambda c: post(c, GOOD, path="/ab", label="10"), 422, "invalid_argument"),
    "ab label superscript digit": (lambda c: post(c, GOOD, path="/ab", label="²"), 422, "invalid_argument"),
    "ab model without baseline": (lambda c: post(c, GOOD, path="/ab", model=BN), 409, "no_baseline"),
    "unknown route": (lambda c: c.get("/nowhere"), 404, "not_found"),
    "wrong method": (lambda c: c.get("/predict"), 405, "method_not_allowed"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(client, case):
    send, status, code = CASES[case]
    r = send(client)
    assert r.status_code == status, r.text
    error = error_of(r)
    assert error["code"] == code
    assert len(error["message"]) > 10


def test_messages_say_what_is_wrong(client):
    assert "5000x5000" in error_of(post(client, png_header_only(5000, 5000)))["message"]
    assert f"limit is {MAX_PIXELS}" in error_of(post(client, png_header_only(30000, 30000)))["message"]
    assert "nope" in error_of(post(client, GOOD, model="nope"))["message"]
    assert "Ankle boot" in error_of(post(client, GOOD, path="/ab", label="Hat"))["message"]  # lists the valid labels
    files = [("file", ("ok.png", GOOD, "image/png")), ("file", ("bad.png", b"junk" * 20, "image/png"))]
    message = error_of(client.post("/predict", files=files))["message"]
    assert "file 1" in message and "bad.png" in message


def test_server_healthy_after_bad_input(client):
    for send, _, _ in CASES.values():
        send(client)
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert post(client, GOOD).status_code == 200


def test_rejections_are_counted(client):
    post(client, b"")
    text = client.get("/metrics").text
    assert 'rbn_serve_rejected_requests_total{reason="empty_body",route="/predict"}' in text


def _series(text: str, series: str) -> float:
    return next((float(line.removeprefix(series)) for line in text.splitlines() if line.startswith(series + " ")), 0.0)


def test_client_disconnecting_mid_upload_is_a_4xx_not_an_error(server, client):
    errors = f'rbn_serve_requests_total{{model="{RBN}",route="/predict",status="5xx"}}'
    refused = f'rbn_serve_requests_total{{model="{RBN}",route="/predict",status="4xx"}}'
    gone = 'rbn_serve_rejected_requests_total{reason="client_disconnected",route="/predict"}'
    before, logged = client.get("/metrics").text, len(server.log())
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock:  # promise 100000 bytes, send 100, hang up
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 100000\r\n\r\n" + GOOD[:100])
        time.sleep(0.2)
    deadline = time.monotonic() + 10
    while _series(text := client.get("/metrics").text, refused) == _series(before, refused) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _series(text, gone) == _series(before, gone) + 1
    assert _series(text, errors) == _series(before, errors)
    assert _series(text, refused) == _series(before, refused) + 1  # recorded as 499, nginx's "client closed request"
    log = server.log()[logged:]
    assert "ClientDisconnect" not in log and "Traceback" not in log
