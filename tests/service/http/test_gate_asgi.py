"""The request gate (service/http/middleware.py) reached directly through the ASGI app, in process.

Over HTTP, uvicorn's parser answers a repeated Content-Length with its own plain-text 400 before any
application code runs, so the gate's JSON ``bad_header`` answer for it is only reachable here (or behind a
proxy that forwards both copies). Also: the body limit at exactly ``max_body_bytes``, one below and one above,
declared and streamed; the request id; the headers every answer carries; the request metrics."""

from __future__ import annotations

import pytest
from tests.service.asgi_app import RBN_MODEL, SAMPLE, app, metric

LIMIT = 1024  # the smallest max_body_bytes Settings allows
PNG = (b"content-type", b"image/png")


def padded(size: int) -> bytes:
    """The 28x28 sample PNG with zero bytes after its IEND chunk: still the same image, ``size`` bytes long."""
    assert size >= len(SAMPLE)
    return SAMPLE + bytes(size - len(SAMPLE))


@pytest.fixture(scope="module")
def gated():
    with app(max_body_bytes=LIMIT) as a:
        yield a


def length(n: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(n).encode())


@pytest.mark.parametrize("name", [b"content-length", b"content-type", b"content-encoding", b"transfer-encoding",
                                  b"inference-header-content-length", b"authorization", b"host"])
def test_a_repeated_header_that_must_be_single_is_a_json_bad_header(gated, name):
    body = padded(500)
    headers = [PNG, length(len(body))]
    value = {b"content-length": str(len(body)).encode(), b"content-type": b"image/png", b"host": b"test"}.get(name, b"x")
    headers.append((name, value))  # a second copy (host and the first two are already there once)
    if name in (b"inference-header-content-length", b"content-encoding", b"authorization", b"transfer-encoding"):
        headers.append((name, value))
    r = gated.raw("POST", "/predict", headers, [body])
    assert r.status == 400, r.body
    assert r.json()["error"]["code"] == "bad_header"
    assert r.json()["error"]["message"] == f"header {name.decode()} is repeated; send it once"
    assert r.headers["x-request-id"] == r.json()["error"]["request_id"]


def test_two_equal_content_lengths_are_still_refused(gated):
    r = gated.raw("POST", "/predict", [PNG, length(500), length(500)], [padded(500)])
    assert r.status == 400 and r.json()["error"]["code"] == "bad_header"


def test_repeated_headers_that_may_repeat_pass(gated):
    r = gated.raw("POST", "/predict", [PNG, length(len(SAMPLE)), (b"accept", b"a"), (b"accept", b"b")], [SAMPLE])
    assert r.status == 200, r.body


@pytest.mark.parametrize("value", [b"12a", b"+500", b"-1", b" 500", b"5 00", "\u00b2".encode(), b"0x10", b""])
def test_a_content_length_that_is_not_ascii_digits_is_400(gated, value):
    r = gated.raw("POST", "/predict", [PNG, (b"content-length", value)], [padded(500)])
    assert r.status == 400, (value, r.body)
    assert r.json()["error"] == {"code": "bad_header", "message": "Content-Length must be ASCII digits",
                                 "request_id": r.headers["x-request-id"]}


def test_content_length_with_transfer_encoding_is_400(gated):
    r = gated.raw("POST", "/predict", [PNG, length(500), (b"transfer-encoding", b"chunked")], [padded(500)])
    assert r.status == 400
    assert r.json()["error"]["message"] == "Content-Length and Transfer-Encoding together are ambiguous; send one"


@pytest.mark.parametrize(("size", "status"), [(LIMIT - 1, 200), (LIMIT, 200), (LIMIT + 1, 413)])
def test_the_declared_body_limit_is_exact(gated, size, status):
    body = padded(size)
    r = gated.raw("POST", "/predict", [PNG, length(size)], [body])
    assert r.status == status, (size, r.body)
    if status == 413:
        assert r.json()["error"] == {"code": "body_too_large",
                                     "message": f"request body of {size} bytes exceeds the limit of {LIMIT}",
                                     "request_id": r.headers["x-request-id"]}
    else:
        assert r.json()["predictions"][0]["label"]


@pytest.mark.parametrize(("size", "status"), [(LIMIT - 1, 200), (LIMIT, 200), (LIMIT + 1, 413)])
def test_the_streamed_body_limit_is_exact(gated, size, status):
    """No Content-Length: the bytes are counted as they arrive, over several messages."""
    body = padded(size)
    chunks = [body[:400], body[400:800], body[800:]]
    r = gated.raw("POST", "/predict", [PNG, (b"transfer-encoding", b"chunked")], chunks)
    assert r.status == status, (size, r.body)
    if status == 413:
        assert r.json()["error"]["message"] == f"request body exceeds the limit of {LIMIT} bytes"


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_read(gated):
    r = gated.raw("POST", "/predict", [PNG, length(LIMIT + 1)], [b""])  # declared, never sent
    assert r.status == 413


def test_the_request_id_is_the_clients_or_new_and_the_first_of_several(gated):
    r = gated.raw("GET", "/healthz", [(b"x-request-id", b"abc-123")])
    assert r.status == 200 and r.headers["x-request-id"] == "abc-123"
    r = gated.raw("GET", "/healthz", [(b"x-request-id", b"first-1"), (b"x-request-id", b"proxy-2")])
    assert r.status == 200 and r.headers["x-request-id"] == "first-1"
    made = gated.raw("GET", "/healthz", []).headers["x-request-id"]
    assert made and made != gated.raw("GET", "/healthz", []).headers["x-request-id"]


def test_every_answer_carries_nosniff_and_data_answers_no_store(gated):
    for path, status in (("/healthz", 200), ("/models", 200), ("/nowhere", 404)):
        r = gated.raw("GET", path, [])
        assert r.status == status
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
    assert gated.raw("GET", "/static/app.js", []).headers.get("cache-control") != "no-store"


def test_draining_answers_close_the_connection(gated):
    assert "connection" not in gated.raw("GET", "/healthz", []).headers
    state = gated.state
    before = state.phase
    state.phase = "draining"
    try:
        assert gated.raw("GET", "/healthz", []).headers["connection"] == "close"
    finally:
        state.phase = before


def test_request_metrics_count_route_model_and_status_class(gated):
    text = gated.metrics_text()
    ok = metric(text, "rbn_serve_requests_total", route="/predict", model=RBN_MODEL, status="2xx")
    bad = metric(text, "rbn_serve_requests_total", route="unmatched", model="", status="4xx")
    assert gated.raw("POST", "/predict", [PNG, length(len(SAMPLE))], [SAMPLE]).status == 200
    assert gated.raw("POST", "/predict", [PNG, length(5), length(5)], [b"12345"]).status == 400
    text = gated.metrics_text()
    assert metric(text, "rbn_serve_requests_total", route="/predict", model=RBN_MODEL, status="2xx") == ok + 1
    assert metric(text, "rbn_serve_requests_total", route="unmatched", model="", status="4xx") == bad + 1
    assert gated.state.in_flight == 0


def test_an_exception_no_route_handled_is_the_generic_500_with_its_request_id(gated):
    async def boom():
        raise RuntimeError("secret detail of the failure")

    if not any(getattr(r, "path", None) == "/test-boom" for r in gated.app.routes):
        gated.app.add_api_route("/test-boom", boom)
    before = metric(gated.metrics_text(), "rbn_serve_requests_total", route="/test-boom", model="", status="5xx")
    r = gated.raw("GET", "/test-boom", [(b"x-request-id", b"boom-1")])
    assert r.status == 500
    assert r.json()["error"]["code"] == "internal" and "secret detail" not in r.body.decode()
    assert r.headers["x-request-id"] == "boom-1" and r.headers["x-content-type-options"] == "nosniff"
    after = metric(gated.metrics_text(), "rbn_serve_requests_total", route="/test-boom", model="", status="5xx")
    assert after == before + 1 and gated.state.in_flight == 0
