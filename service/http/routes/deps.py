"""Dependency aliases and small helpers the routes share (async, so FastAPI never uses its thread pool)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from service.core.dataplane import DataPlane
from service.core.errors import ModelNotFound
from service.http.middleware import MODEL_KEY
from service.core.model import Model
from service.core.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane


State = Annotated[ServiceState, Depends(get_state)]
Plane = Annotated[DataPlane, Depends(get_plane)]


def lookup(request: Request, name: str | None, version: str | None = None) -> Model:
    """The model a request names (or the primary one), recorded on the scope for the metrics' model label."""
    model = request.app.state.service.model(name)
    if version is not None and version != str(model.meta.version):
        raise ModelNotFound(f"model {name!r} has no version {version!r}; served: {model.meta.version}")
    request.scope[MODEL_KEY] = model.name
    return model


def json_response(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    headers=headers, media_type="application/json")
