"""Which requests take the fast path past FastAPI (service.http.fastpath), where it sits in the
middleware stack, and its error answers. In process: no server."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from service.http.routes import predict
from service.core.config import Settings
from service.http.app import ROUTERS
from service.http.errors import ErrorForms
from service.http.fastpath import RawPredict

FORMS = ErrorForms(ROUTERS)  # the app's


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


def test_the_fast_path_takes_matching_requests_and_passes_the_others_on():
    from fastapi import FastAPI

    calls = []

    async def framework(scope, receive, send):
        calls.append(("fastapi", scope["path"]))
        await send({"type": "http.response.start", "status": 415, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    app = FastAPI()
    app.include_router(predict.router)
    app.state.service = SimpleNamespace(model=lambda name: SimpleNamespace(name="m"), settings=Settings())

    class Plane:
        async def predict(self, model, uploads, top_k):
            calls.append(("fast", len(uploads)))
            return {}

    app.state.plane = Plane()
    fast = RawPredict(framework, app.router, lambda request, status, code: None, FORMS)

    async def receive():
        return {"type": "http.request", "body": b"png", "more_body": False}

    async def send(message):
        pass

    async def drive():
        await fast({**scope(), "app": app}, receive, send)
        await fast({**scope(content_type="text/plain"), "app": app}, receive, send)

    asyncio.run(drive())
    assert calls == [("fast", 1), ("fastapi", "/predict")]


def test_the_fast_path_is_the_innermost_middleware_and_refuses_dependencies(tmp_path):
    from fastapi import Depends, FastAPI
    from starlette.middleware.exceptions import ExceptionMiddleware

    from service.http.app import create_app
    from service.http.middleware import RequestGate

    app = create_app(Settings())
    assert [m.cls for m in app.user_middleware] == [RequestGate, RawPredict]  # outermost first
    stack = app.build_middleware_stack()
    layers = []
    while hasattr(stack, "app"):
        layers.append(type(stack))
        stack = stack.app
    assert layers.index(RequestGate) < layers.index(RawPredict) < layers.index(ExceptionMiddleware)

    async def audit() -> None:
        pass

    guarded = FastAPI(dependencies=[Depends(audit)])
    guarded.include_router(predict.router)
    with pytest.raises(RuntimeError, match="dependencies"):
        RawPredict(None, guarded.router, lambda request, status, code: None, FORMS)


def test_an_unexpected_error_on_the_fast_path_is_a_logged_500_in_our_error_form(caplog):
    """Nothing outside can make the data plane fail unexpectedly on demand, so the app's state is
    stubbed here: the route's own code runs, the data plane raises."""
    import json

    from fastapi import FastAPI

    class Broken:
        async def predict(self, model, uploads, top_k):
            raise RuntimeError("boom")

    app = FastAPI()
    app.include_router(predict.router)
    app.state.service = SimpleNamespace(model=lambda name: SimpleNamespace(name="m"), settings=Settings())
    app.state.plane = Broken()
    rejected = []
    fast = RawPredict(None, app.router, lambda request, status, code: rejected.append((status, code)), FORMS)
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
