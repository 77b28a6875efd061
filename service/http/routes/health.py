"""GET /healthz (alive), /readyz (models loaded and warm, not draining), /metrics (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.http.routes.deps import State, json_response
from service.http.routes.schemas.operations import Health, Readiness
from service.core.metrics import CONTENT_TYPE

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> Response:
    return json_response({"status": "alive"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}},
            summary="Readiness: models loaded and warmed up, not draining")
async def readyz(state: State) -> Response:
    unhealthy = state.unhealthy if state.phase == "ready" else None
    body = {"status": "unhealthy" if unhealthy else state.phase, "models": sorted(state.models)}
    if state.fatal or unhealthy:
        body["reason"] = state.fatal or unhealthy
    return json_response(body, 200 if state.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition"}})
async def metrics(state: State) -> Response:
    return Response(state.metrics.expose(), media_type=CONTENT_TYPE)
