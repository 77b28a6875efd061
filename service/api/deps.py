"""Dependency aliases and small helpers the routes share (async, so FastAPI never uses its thread pool)."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import Depends, Request
from starlette.responses import Response

from service.dataplane import DataPlane
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_plane(request: Request) -> DataPlane:
    return request.app.state.plane


State = Annotated[ServiceState, Depends(get_state)]
Plane = Annotated[DataPlane, Depends(get_plane)]


def json_response(content: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    headers=headers, media_type="application/json")
