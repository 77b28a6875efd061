"""Which requests take the fast path past FastAPI (service.fastpath), and that the middleware sends them there."""

from __future__ import annotations

import asyncio

import pytest

from service.config import Settings
from service.fastpath import RawPredict
from service.metrics import Metrics
from service.middleware import ObserveRequests
from service.state import ServiceState


def scope(method: str = "POST", path: str = "/predict", content_type: str | None = "image/png") -> dict:
    headers = [(b"host", b"test")]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode("latin-1")))
    return {"type": "http", "method": method, "path": path, "headers": headers, "query_string": b"top_k=2"}


@pytest.mark.parametrize(("request_scope", "fast"), [
    (scope(), True),
    (scope(content_type="IMAGE/JPEG; foo=bar"), True),
    (scope(content_type="application/octet-stream"), True),
    (scope(content_type="multipart/form-data; boundary=x"), False),  # FastAPI parses multipart
    (scope(content_type="text/plain"), False),  # FastAPI answers 415
    (scope(content_type=None), False),
    (scope(method="GET"), False),  # 405 from FastAPI
    (scope(method="HEAD"), False),
    (scope(path="/predict/"), False),  # FastAPI's redirect
    (scope(path="/ab"), False),
])
def test_which_requests_take_the_fast_path(request_scope, fast):
    assert RawPredict.matches(request_scope) is fast


def test_the_middleware_sends_matching_requests_to_the_fast_path():
    calls = []

    class Spy:
        matches = staticmethod(RawPredict.matches)

        async def __call__(self, scope, receive, send):
            calls.append(("fast", scope["path"]))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}"})

    async def framework(scope, receive, send):
        calls.append(("fastapi", scope["path"]))
        await send({"type": "http.response.start", "status": 415, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    state = ServiceState(Settings(), Metrics())
    try:
        app = ObserveRequests(framework, state, fast=Spy())

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        async def drive():
            await app(scope(), receive, send)
            await app(scope(content_type="text/plain"), receive, send)

        asyncio.run(drive())
    finally:
        state.decode_pool.shutdown()
    assert calls == [("fast", "/predict"), ("fastapi", "/predict")]
    assert state.in_flight == 0


def test_an_unexpected_error_on_the_fast_path_is_a_logged_500_in_our_error_form(caplog):
    """Nothing outside can make the data plane fail unexpectedly on demand, so the app's state is
    stubbed here: the route's own code runs, the data plane raises."""
    import json
    from types import SimpleNamespace

    from fastapi import FastAPI

    class Broken:
        async def predict(self, model, uploads, top_k):
            raise RuntimeError("boom")

    app = FastAPI()
    app.state.service = SimpleNamespace(model=lambda name: SimpleNamespace(name="m"), settings=Settings())
    app.state.plane = Broken()
    rejected = []
    fast = RawPredict(lambda request, status, code: rejected.append((status, code)))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"png", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(fast({**scope(), "app": app}, receive, send))
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"]) == {"error": {"code": "internal", "message": "internal server error; see the server log"}}
    assert rejected == [(500, "internal")]
    assert "boom" in caplog.text and "Traceback" in caplog.text
