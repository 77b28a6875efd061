"""``create_app(settings)``: the FastAPI application, every route listed here."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi

from service.http import errors
from service.http.routes import ab, health, models, predict, v2
from service.http.routes.schemas.oip import InferRequest
from service.core.config import Settings
from service.core.dataplane import DataPlane
from service.http.fastpath import RawPredict
from service.core.metrics import Metrics
from service.http.auth import Access
from service.http.middleware import UNMATCHED, RequestGate
from service.core.oip import server_metadata
from service.core.state import ServiceState
from service.http.web import page

DESCRIPTION = """\
Image classifiers built with Representative Batch Normalization, served through ONNX Runtime.

* `POST /predict` — top-k labels and an out-of-distribution block per image.
* `POST /ab` — an RBN model against its BN baseline on the same (optionally corrupted) input.
* `/v2/...` — the Open Inference Protocol (KServe / Triton REST) on preprocessed FP32 tensors.
* `GET /ab/summary` — what this process's A/B comparisons found, with Wilson 95% intervals.
* `GET /models`, `/healthz`, `/readyz`, `/metrics`; `GET /` is a page for trying the A/B comparison.

Errors on our routes are `{"error": {"code", "message"}}`; on `/v2` routes `{"error": message}`.
"""

ROUTERS = (
    predict.router,  # POST /predict
    ab.router,       # POST /ab
    models.router,   # GET /models, /models/{name}
    health.router,   # GET /healthz, /readyz, /metrics
    v2.router,       # /v2, /v2/health/{live,ready}, /v2/models/{name}[/versions/{v}][/ready|/infer]: the protocol's error form
)


def create_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    metrics = metrics or Metrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="rbn-serve", version=server_metadata()["version"], description=DESCRIPTION, lifespan=lifespan,
                  **docs)
    app.state.service = state
    app.state.plane = DataPlane(state)

    for router in ROUTERS:
        app.include_router(router)
    page.install(app)                    # GET / (the A/B workbench), /static, /samples; /docs and /redoc offline

    def on_reject(request: Request, status: int, code: str) -> None:
        route = request.scope.get("route")
        metrics.rejected.labels(route.path if route is not None else UNMATCHED, code).inc()

    # Each protocol's router declares its error form; the connection's own refusals read them too (server.py).
    forms = app.state.error_forms = errors.ErrorForms(ROUTERS)
    errors.install(app, on_reject, forms)
    # Added first, so innermost: middleware added later (outside) sees the fast path's requests too.
    app.add_middleware(RawPredict, router=app.router, on_reject=on_reject, forms=forms)
    # Outermost of ours: the request id, header checks and the API key apply to every route, the fast path too.
    access = Access.from_settings(settings)
    app.add_middleware(RequestGate, state=state, access=access, on_reject=on_reject, forms=forms)
    app.openapi = lambda: _openapi(app, access.required)
    return app


def _openapi(app: FastAPI, key_required: bool = False) -> dict:
    """The generated schema plus the models that routes reading raw bodies refer to, and the bearer
    scheme when an API key is required (so /docs' "Authorize" sends it)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        if key_required:
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (InferRequest,):
            extra = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in extra.pop("$defs", {}).items():
                components.setdefault(name, definition)
            components.setdefault(model.__name__, extra)
        app.openapi_schema = schema
    return app.openapi_schema
