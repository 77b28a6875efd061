"""Every query parameter, declared once: its OpenAPI schema and description, and the reader that
enforces them. Read by hand: FastAPI's per-request dependency solving costs more than decoding a
small image, and one declaration keeps the documentation and the checks from drifting apart."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from rbn.contract.corruptions import CORRUPTION_NAMES, SEVERITIES
from service.core.errors import InvalidArgument


@dataclass(frozen=True)
class QueryParam:
    """An optional query parameter: a string (``max_length``, ``choices``) or an integer (``minimum``..``maximum``)."""

    name: str
    description: str
    kind: type = str
    max_length: int = 64
    choices: tuple[str, ...] | None = None
    minimum: int | None = None
    maximum: int | None = None
    example: object | None = None

    @property
    def doc(self) -> dict:
        """The OpenAPI parameter object."""
        if self.kind is int:
            schema: dict = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        elif self.choices is not None:
            schema = {"type": "string", "enum": list(self.choices)}
        else:
            schema = {"type": "string", "maxLength": self.max_length}
        out = {"name": self.name, "in": "query", "required": False, "schema": schema, "description": self.description}
        if self.example is not None:
            out["example"] = self.example
        return out

    def read(self, request: Request) -> str | int | None:
        """The value, None when absent or empty; InvalidArgument (422) when it breaks the declaration."""
        raw = request.query_params.get(self.name)
        if raw is None or raw == "":
            return None
        if self.kind is int:
            try:
                value = int(raw)
            except ValueError:
                value = None
            if value is None or not self.minimum <= value <= self.maximum:
                raise InvalidArgument(f"query parameter {self.name!r} must be an integer from {self.minimum} "
                                      f"to {self.maximum}, got {raw[:20]!r}")
            return value
        if self.choices is not None and raw not in self.choices:
            raise InvalidArgument(f"query parameter {self.name!r} must be one of {', '.join(self.choices)}, got {raw[:64]!r}")
        if len(raw) > self.max_length:
            raise InvalidArgument(f"query parameter {self.name!r} is longer than {self.max_length} characters")
        return raw


MODEL = QueryParam("model", "model name; default: the primary RBN model", example="fmnist-resnet20-rbn")
TOP_K = QueryParam("top_k", "labels per image (and arm); default from settings, capped at the number of classes",
                   kind=int, minimum=1, maximum=1000, example=3)
CORRUPTION = QueryParam("corruption", "corruption applied to the preprocessed image before both arms",
                        choices=tuple(CORRUPTION_NAMES), example="gaussian_noise")
SEVERITY = QueryParam("severity", "corruption severity, with corruption; default 3", kind=int,
                      minimum=min(SEVERITIES), maximum=max(SEVERITIES), example=3)
SEED = QueryParam("seed", "seed of the corruption's random draws; default 0", kind=int, minimum=0, maximum=2**32 - 1)
LABEL = QueryParam("label", "true class: index or name (any case)", example="Sneaker")
INPUT_PNG = QueryParam("input_png", "true: each result carries the image both arms saw (after preprocessing and "
                       "corruption) as a base64 PNG in input_png", choices=("true", "false"), example="true")
