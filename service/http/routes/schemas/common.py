"""The closed base of every response model, and our routes' error answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Closed(BaseModel):
    """A response model: unknown keys are validation errors (and ``additionalProperties: false`` in OpenAPI)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def examples(*items: dict) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": list(items)})


# --- errors ---------------------------------------------------------------------------------
class ErrorDetail(Closed):
    code: str = Field(description="stable machine-readable reason, e.g. too_many_pixels, queue_full")
    message: str
    request_id: str | None = Field(None, description="the answer's X-Request-ID: quote it when asking about an error")


class ErrorResponse(Closed):
    model_config = examples(
        {"error": {"code": "too_many_pixels", "message": "image is 20000x20000 = 400000000 pixels; the limit is 16777216"}}
    )
    error: ErrorDetail


ERRORS = {
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Body, pixel count or number of files over the limit"},
    415: {"model": ErrorResponse, "description": "Not an image we can read, or an unsupported Content-Type"},
    422: {"model": ErrorResponse, "description": "Empty or corrupt image, bad query value"},
    503: {"model": ErrorResponse, "description": "Queue full (Retry-After set) or shutting down"},
}
