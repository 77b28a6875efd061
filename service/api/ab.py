"""POST /ab: the same preprocessed image through an RBN model and its BN baseline, compared."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from rbn.corruptions import CORRUPTION_NAMES, SEVERITIES
from service.api.deps import Plane, State, json_response
from service.api.schemas import ERRORS, AbResponse, ErrorResponse
from service.api.uploads import IMAGE_BODY, read_uploads
from service.dataplane import Corruption, parse_label
from service.errors import InvalidArgument
from service.middleware import MODEL_KEY

router = APIRouter(tags=["inference"])

ModelQuery = Annotated[str | None, Query(description="RBN model name; default: the primary model",
                                         examples=["fmnist-resnet20-rbn"], max_length=64)]
TopKQuery = Annotated[int | None, Query(ge=1, le=1000, description="labels per image and arm")]
CorruptionName = StrEnum("CorruptionName", {name: name for name in CORRUPTION_NAMES})
DEFAULT_SEVERITY = 3


@router.post(
    "/ab",
    response_model=AbResponse,
    responses={**ERRORS, 409: {"model": ErrorResponse, "description": "The model has no loaded baseline"}},
    openapi_extra=IMAGE_BODY,
    summary="Compare an RBN model with its BN baseline",
    description=(
        "Both arms see the same preprocessed tensor. With `corruption` (and `severity`, default 3) the "
        "preprocessed image is corrupted server-side first, deterministically for `seed`. With `label` "
        "(class index or name) the answer says which arm was right.\n\n"
        "```\ncurl -s --data-binary @shoe.png -H 'Content-Type: image/png' "
        "'http://localhost:8000/ab?corruption=gaussian_noise&severity=4&label=Sneaker'\n```"
    ),
)
async def ab(
    request: Request,
    state: State,
    plane: Plane,
    model: ModelQuery = None,
    corruption: Annotated[CorruptionName | None, Query(description="corruption applied before both arms")] = None,
    severity: Annotated[int | None, Query(ge=min(SEVERITIES), le=max(SEVERITIES), description="1..5, with corruption")] = None,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="seed of the corruption's random draws")] = 0,
    label: Annotated[str | None, Query(max_length=64, description="true class: index or name", examples=["Sneaker", "7"])] = None,
    top_k: TopKQuery = None,
) -> Response:
    if severity is not None and corruption is None:
        raise InvalidArgument("severity needs a corruption")
    served = state.model(model)
    request.scope[MODEL_KEY] = served.name
    shift = None if corruption is None else Corruption(corruption.value, severity or DEFAULT_SEVERITY, seed)
    index = parse_label(label, served.meta.labels)
    uploads = await read_uploads(request, state.settings)
    return json_response(await plane.ab(served, uploads, shift, index, top_k or state.settings.default_top_k))
