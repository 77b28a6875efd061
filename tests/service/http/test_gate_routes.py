"""The request gate (service/http/middleware.py) as the routes behind it see it, in process.

Probe routes (raw ASGI endpoints added to the real app) record what the gate hands them: the request id in
the ASGI scope (``rbn.request_id``) and in the request context, the accepted key's principal, the
"client gone" check. Then the gate's bookkeeping around a route: the in-flight count while several requests
are inside at once, the latency it records, a route that never answers (5xx), an answer start without
headers, an error after the answer started (raised, never a second answer), the log line of a failure, the
rejection reasons it counts. The client-gone check is read from uvicorn's own request cycle: the real app
served by a real uvicorn in a thread of this process, and a client that hangs up."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import anyio
import pytest
import uvicorn
from starlette.routing import Match, Route
from tests.service.asgi_app import app, metric

from service.core import context as request_context
from service.http.auth import Access
from service.http.middleware import REQUEST_ID_KEY, RequestGate, gone_check

KEY = "gate-probe-key-0123456789"


class Probe:
    """A raw ASGI endpoint: records what the gate gave it, then runs ``act`` (answers 204 by default)."""

    def __init__(self, act=None) -> None:
        self.act = act or no_content
        self.seen: list[dict] = []

    async def __call__(self, scope, receive, send) -> None:
        ctx = request_context.current.get()
        gone = ctx.client_gone
        self.seen.append({"scope_id": scope.get(REQUEST_ID_KEY), "context_id": ctx.request_id, "gone": gone,
                          "gone_now": None if gone is None else gone(), "principal": ctx.principal})
        await self.act(scope, receive, send)


async def no_content(scope, receive, send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


class ProbeRoute(Route):
    """A starlette route that names itself in the scope, as FastAPI's routes do (the metrics' route label)."""

    def matches(self, scope):
        match, child = super().matches(scope)
        if match != Match.NONE:
            child["route"] = self
        return match, child


def mount(served, path: str, act=None) -> Probe:
    probe = Probe(act)
    routes = served.app.router.routes
    routes[:] = [r for r in routes if getattr(r, "path", None) != path]
    routes.append(ProbeRoute(path, probe, methods=["GET", "POST"]))
    return probe


def scope_for(served, method: str, path: str, headers=()) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
            "headers": [(b"host", b"test"), *headers], "client": ("127.0.0.1", 1234), "server": ("test", 80),
            "app": served.app}


async def drive(asgi, scope, sent: list, receive=None) -> None:
    async def one_empty_body():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    await asgi(scope, receive or one_empty_body, send)


def starts(sent: list) -> list[dict]:
    return [m for m in sent if m["type"] == "http.response.start"]


def header(start: dict, name: bytes) -> bytes | None:
    found = [v for k, v in start.get("headers", []) if k.lower() == name]
    return found[-1] if found else None


@pytest.fixture(scope="module")
def served():
    with app() as a:
        yield a


@pytest.fixture(scope="module")
def keyed():
    with app(api_key=KEY) as a:
        yield a


def requests_total(served, path: str, status: str) -> float:
    return metric(served.metrics_text(), "rbn_serve_requests_total", route=path, model="", status=status)


# --- what a route is handed ----------------------------------------------------------------------------------
def test_routes_find_the_request_id_in_the_scope_and_in_the_context(served):
    probe = mount(served, "/test-probe/id")
    r = served.raw("GET", "/test-probe/id", [(b"x-request-id", b"probe-id-1")])
    assert r.status == 204 and r.headers["x-request-id"] == "probe-id-1"
    assert probe.seen[-1]["scope_id"] == probe.seen[-1]["context_id"] == "probe-id-1"
    r = served.raw("GET", "/test-probe/id", [])  # none given: the one the gate made, the same everywhere
    made = r.headers["x-request-id"]
    assert made and probe.seen[-1]["scope_id"] == probe.seen[-1]["context_id"] == made


def test_the_principal_is_set_only_when_a_key_was_checked(served, keyed):
    probe = mount(keyed, "/test-probe/key")
    assert keyed.raw("GET", "/test-probe/key", []).status == 401 and probe.seen == []
    assert keyed.raw("GET", "/test-probe/key", [(b"authorization", f"Bearer {KEY}".encode())]).status == 204
    assert probe.seen[-1]["principal"] == "api_key"
    open_probe = mount(served, "/test-probe/key")  # keys off: nobody was identified
    assert served.raw("GET", "/test-probe/key", []).status == 204
    assert open_probe.seen[-1]["principal"] is None


def test_the_rejections_the_gate_answers_are_counted_by_reason(served, keyed):
    def rejected(a, reason):
        return metric(a.metrics_text(), "rbn_serve_rejected_requests_total", route="unmatched", reason=reason)

    before = rejected(keyed, "unauthorized")
    r = keyed.raw("GET", "/models", [])
    assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert rejected(keyed, "unauthorized") == before + 1
    before = rejected(served, "bad_header")
    assert served.raw("POST", "/predict", [(b"content-length", b"5"), (b"content-length", b"5")], [b"12345"]).status == 400
    assert rejected(served, "bad_header") == before + 1


# --- the client-gone check -----------------------------------------------------------------------------------
def test_gone_check_is_none_for_a_receive_without_uvicorns_flag():
    async def plain():
        return {"type": "http.disconnect"}

    assert gone_check(plain) is None
    assert gone_check(asyncio.Queue().get) is None  # a bound method, but its object has no "disconnected"


def test_in_process_the_route_is_told_nothing_about_the_client(served):
    probe = mount(served, "/test-probe/gone-unknown")
    assert served.raw("GET", "/test-probe/gone-unknown", []).status == 204
    assert probe.seen[-1]["gone"] is None
    queue: asyncio.Queue = asyncio.Queue()  # a server whose receive is a queue's get: unknown, not an error
    queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})
    sent: list = []
    served.client.portal.call(drive, served.app, scope_for(served, "GET", "/test-probe/gone-unknown"), sent, queue.get)
    assert starts(sent)[0]["status"] == 204 and probe.seen[-1]["gone"] is None


class Uvicorn:
    """The app served by uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, asgi) -> None:
        self.server = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=0, lifespan="off", log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> int:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.01)
        return self.server.servers[0].sockets[0].getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def test_a_route_behind_uvicorn_sees_its_client_hang_up(served):
    entered, done, after = threading.Event(), threading.Event(), []

    async def wait_for_hang_up(scope, receive, send):
        entered.set()
        gone = request_context.current.get().client_gone
        deadline = time.monotonic() + 15
        while not gone() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        after.append(gone())
        done.set()

    probe = mount(served, "/test-probe/gone", wait_for_hang_up)
    with Uvicorn(served.app) as port:
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(b"GET /test-probe/gone HTTP/1.1\r\nHost: test\r\n\r\n")
        assert entered.wait(20), "the request did not reach the route"
        seen = probe.seen[-1]
        assert callable(seen["gone"]) and seen["gone_now"] is False  # connected: not gone
        client.close()
        assert done.wait(20)
    assert after == [True]


# --- the gate's bookkeeping around a route ----------------------------------------------------------------------
def test_the_in_flight_count_is_every_request_inside_the_gate(served):
    state = served.state
    base = state.in_flight
    inside: list[int] = []

    async def three_at_once():
        release = anyio.Event()

        async def hold(scope, receive, send):
            inside.append(state.in_flight)
            await release.wait()
            await no_content(scope, receive, send)

        mount(served, "/test-probe/hold", hold)
        sent: list = []
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(drive, served.app, scope_for(served, "GET", "/test-probe/hold"), sent)
            while len(inside) < 3:
                await anyio.sleep(0.001)
            inside.append(state.in_flight)
            release.set()
        return sent

    sent = served.client.portal.call(three_at_once)
    assert inside == [base + 1, base + 2, base + 3, base + 3]
    assert [s["status"] for s in starts(sent)] == [204, 204, 204]
    assert state.in_flight == base


def test_the_recorded_latency_is_the_time_spent_in_the_gate(served):
    async def slow(scope, receive, send):
        await anyio.sleep(0.2)
        await no_content(scope, receive, send)

    mount(served, "/test-probe/slow", slow)
    labels = {"route": "/test-probe/slow", "model": ""}
    before = metric(served.metrics_text(), "rbn_serve_request_duration_seconds_sum", **labels)
    started = time.perf_counter()
    assert served.raw("GET", "/test-probe/slow", []).status == 204
    took = time.perf_counter() - started
    recorded = metric(served.metrics_text(), "rbn_serve_request_duration_seconds_sum", **labels) - before
    assert 0.2 <= recorded <= took


def test_an_answer_start_without_headers_still_gets_the_gates_headers(served):
    async def bare(scope, receive, send):
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body", "body": b""})

    mount(served, "/test-probe/bare", bare)
    r = served.raw("GET", "/test-probe/bare", [(b"x-request-id", b"bare-1")])
    assert r.status == 204
    assert (r.headers["x-request-id"], r.headers["x-content-type-options"], r.headers["cache-control"]) == (
        "bare-1", "nosniff", "no-store")


def test_a_route_that_never_answers_counts_as_a_server_error(served):
    async def silent(scope, receive, send):
        return None

    mount(served, "/test-probe/silent", silent)
    before = requests_total(served, "/test-probe/silent", "5xx")
    sent: list = []
    served.client.portal.call(drive, served.app, scope_for(served, "GET", "/test-probe/silent"), sent)
    assert sent == []
    assert requests_total(served, "/test-probe/silent", "5xx") == before + 1
    assert served.state.in_flight == 0


def test_an_error_after_the_answer_started_is_raised_and_never_answered_twice(served):
    async def half(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        raise RuntimeError("failed half way")

    mount(served, "/test-probe/half", half)
    before = requests_total(served, "/test-probe/half", "2xx")
    sent: list = []
    with pytest.raises(RuntimeError, match="failed half way"):
        served.client.portal.call(drive, served.app, scope_for(served, "GET", "/test-probe/half"), sent)
    assert [s["status"] for s in starts(sent)] == [200]  # the client's connection is cut; no second answer
    assert requests_total(served, "/test-probe/half", "2xx") == before + 1  # counted with the status it got
    assert served.state.in_flight == 0


def test_a_failure_before_the_answer_is_the_generic_500_and_logged_with_method_and_path(served, caplog):
    async def boom(scope, receive, send):
        raise RuntimeError("secret detail")

    mount(served, "/test-probe/boom", boom)
    with caplog.at_level(logging.ERROR, logger="service.http.middleware"):
        r = served.raw("POST", "/test-probe/boom", [(b"x-request-id", b"boom-2")])
    assert r.status == 500 and r.json()["error"] == {"code": "internal", "message": "internal server error; see the server log",
                                                     "request_id": "boom-2"}
    logged = [rec for rec in caplog.records if rec.name == "service.http.middleware"]
    assert [rec.getMessage() for rec in logged] == ["POST /test-probe/boom failed"]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError


# --- the gate as a component: its on_reject and the errors of an app that handles none ---------------------------
def gate_around(served, inner, keys=()) -> tuple[RequestGate, list]:
    calls: list = []
    gate = RequestGate(inner, served.state, Access([k.encode() for k in keys], docs=True, metrics_open=True),
                       on_reject=lambda request, status, code: calls.append((request.url.path, status, code)),
                       forms=served.app.state.error_forms)
    return gate, calls


def test_the_gate_tells_on_reject_the_status_and_the_code(served):
    async def inner(scope, receive, send):
        await no_content(scope, receive, send)

    gate, calls = gate_around(served, inner, keys=[KEY])
    sent: list = []
    served.client.portal.call(drive, gate, scope_for(served, "GET", "/models"), sent)
    assert starts(sent)[0]["status"] == 401 and calls == [("/models", 401, "unauthorized")]
    sent.clear()
    repeated = [(b"authorization", f"Bearer {KEY}".encode())] * 2
    served.client.portal.call(drive, gate, scope_for(served, "GET", "/models", repeated), sent)
    assert starts(sent)[0]["status"] == 400 and calls[-1] == ("/models", 400, "bad_header")


def test_an_error_the_inner_app_does_not_handle_is_answered_by_its_kind(served):
    limit = served.state.settings.max_body_bytes

    async def reads_the_body(scope, receive, send):
        await receive()  # the gate's receive refuses a declared length over the limit
        await no_content(scope, receive, send)

    gate, calls = gate_around(served, reads_the_body)
    sent: list = []
    served.client.portal.call(drive, gate, scope_for(served, "POST", "/anything", [(b"content-length", str(limit + 1).encode())]),
                              sent)
    assert [s["status"] for s in starts(sent)] == [413]
    assert calls == [("/anything", 413, "body_too_large")]
