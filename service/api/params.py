"""Query parameters of the hot routes, read by hand: FastAPI's per-request dependency solving costs
more than decoding a small image. Each reader has its OpenAPI description next to it."""

from __future__ import annotations

from fastapi import Request

from service.errors import InvalidArgument


def doc(name: str, schema: dict, description: str, example: object | None = None) -> dict:
    """An OpenAPI query parameter object."""
    parameter = {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
    if example is not None:
        parameter["example"] = example
    return parameter


def text(request: Request, name: str, max_length: int = 64) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > max_length:
        raise InvalidArgument(f"query parameter {name!r} is longer than {max_length} characters")
    return value


def integer(request: Request, name: str, minimum: int, maximum: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not minimum <= value <= maximum:
        raise InvalidArgument(f"query parameter {name!r} must be an integer from {minimum} to {maximum}, got {raw[:20]!r}")
    return value


MODEL_DOC = doc("model", {"type": "string", "maxLength": 64}, "model name; default: the primary RBN model",
                "fmnist-resnet20-rbn")
TOP_K_DOC = doc("top_k", {"type": "integer", "minimum": 1, "maximum": 1000},
                "labels per image (default from settings; capped at the number of classes)", 3)
