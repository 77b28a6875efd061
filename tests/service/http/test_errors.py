"""One exception -> response function for every path (service.http.errors.answer), in process: status,
stable code, message, headers, the protocol's error form (declared by the protocol's router), and the
rejection it counts."""

from __future__ import annotations

import json

import pytest
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from service.core import errors
from service.http.app import ROUTERS
from service.http.errors import OIP, OURS, ErrorForms, answer, route_class
from service.http.routes import v2

FORMS = ErrorForms(ROUTERS)  # the app's


def request(path: str, method: str = "POST", route: object = None) -> Request:
    scope = {"type": "http", "method": method, "path": path, "headers": [], "query_string": b""}
    if route is not None:
        scope["route"] = route
    return Request(scope)


def answered(path: str, exc: BaseException, method: str = "POST", route: object = None):
    rejected = []
    response = answer(request(path, method, route), exc, lambda r, status, code: rejected.append((status, code)), FORMS)
    return response.status_code, json.loads(response.body), dict(response.headers), rejected


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, errors.ServiceError)])
def test_every_service_error_in_both_forms(cls):
    status, body, _, rejected = answered("/predict", cls("why"))
    assert (status, body, rejected) == (cls.status, {"error": {"code": cls.code, "message": "why"}}, [(cls.status, cls.code)])
    status, body, _, rejected = answered("/v2/models/m/infer", cls("why"))
    assert (status, body, rejected) == (cls.status, {"error": "why"}, [(cls.status, cls.code)])


def test_headers_travel_with_the_answer():
    _, _, headers, _ = answered("/predict", errors.QueueFull("full", headers={"Retry-After": "4"}))
    assert headers["retry-after"] == "4"


def test_validation_errors_are_422_here_and_400_under_v2():
    exc = RequestValidationError([{"loc": ("query", "top_k"), "msg": "too big"}])
    assert answered("/predict", exc)[:2] == (422, {"error": {"code": "invalid_argument", "message": "query.top_k: too big"}})
    assert answered("/v2/models/m", exc)[:2] == (400, {"error": "query.top_k: too big"})


def test_http_errors_name_the_route_or_method():
    status, body, _, rejected = answered("/nope", HTTPException(404), method="GET")
    assert (status, body["error"]["code"], rejected) == (404, "not_found", [(404, "not_found")])
    assert body["error"]["message"] == "no route GET /nope; see /docs"
    status, body, _, _ = answered("/predict", HTTPException(405), method="GET", route=object())
    assert (status, body["error"]) == (405, {"code": "method_not_allowed", "message": "method GET is not allowed on /predict"})


def test_a_client_that_left_and_an_unexpected_error():
    status, body, _, rejected = answered("/predict", ClientDisconnect())
    assert (status, body["error"]["code"], rejected) == (errors.CLIENT_CLOSED, "client_disconnected",
                                                          [(499, "client_disconnected")])
    status, body, _, rejected = answered("/ab", RuntimeError("secret detail"))
    assert (status, rejected) == (500, [(500, "internal")])
    assert body == {"error": {"code": "internal", "message": "internal server error; see the server log"}}


def test_the_route_that_takes_a_request_decides_its_form():
    infer = next(r for r in v2.router.routes if r.path.endswith("/infer"))
    assert FORMS.of("/v2/models/m/infer", infer) is OIP
    assert FORMS.of("/v2/models/m/infer") is OIP  # refused before routing: the prefix its router declared
    assert FORMS.of("/v2") is OIP and FORMS.of("/v2/no/such/route") is OIP
    assert FORMS.of("/v2x") is OURS and FORMS.of("/predict") is OURS and FORMS.of("/") is OURS
    # a route declares its form wherever it lives, and one that declares none answers in ours (even under /v2)
    assert FORMS.of("/anywhere", route_class(OIP)("/anywhere", lambda: None)) is OIP
    assert FORMS.of("/v2/models/m/infer", object()) is OURS
    # no router declared, no form but ours
    assert ErrorForms().of("/v2/models/m/infer") is OURS
