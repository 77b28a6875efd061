"""Read the image(s) of a /predict or /ab request: a raw ``image/*`` body or multipart field(s) ``file``.

A multipart body larger than ``inline_body_bytes`` is parsed in the decode pool: the parser works in
Python, and a body of many near-boundaries costs it about 10 ms per megabyte."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import Headers
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.core.config import Settings
from service.core.decoding import Upload
from service.core.errors import InvalidArgument, TooManyFiles, UnsupportedMediaType

FIELD = "file"

# The request body as documented in the OpenAPI schema (the routes read it themselves).
IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body (Content-Type image/*), "
                       "or multipart field(s) 'file' (several files: several answers).",
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FIELD],
                    "properties": {FIELD: {"type": "array", "items": {"type": "string", "format": "binary"}}},
                }
            },
        },
    }
}


def media_type(content_type: str) -> str:
    """'Image/PNG; x=y' -> 'image/png'."""
    return content_type.partition(";")[0].strip().lower()


def is_raw_image(content_type: str) -> bool:
    """A body that is one image: ``image/*`` or ``application/octet-stream`` (parameters ignored)."""
    media = media_type(content_type)
    return media.startswith("image/") or media == "application/octet-stream"


async def read_uploads(request: Request, settings: Settings) -> list[Upload]:
    content_type = request.headers.get("content-type", "")
    if is_raw_image(content_type):
        return [Upload(await request.body())]
    if media_type(content_type) == "multipart/form-data":
        return await _multipart(request, settings)
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not supported; send an image as the body "
        f"(Content-Type image/png, image/jpeg, ...) or multipart/form-data with field {FIELD!r}"
    )


async def _multipart(request: Request, settings: Settings) -> list[Upload]:
    body = await request.body()  # bounded by max_body_bytes (service.http.middleware)
    if len(body) <= settings.inline_body_bytes:
        return await _parse(request.headers, body, settings)
    return await request.app.state.service.decoder.pool.run(_parse_in_thread, request.headers, body, settings)


def _parse_in_thread(headers: Headers, body: bytes, settings: Settings) -> list[Upload]:
    return asyncio.run(_parse(headers, body, settings))  # the parser is async: its own loop, in this thread


async def _chunks(body: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _parse(headers: Headers, body: bytes, settings: Settings) -> list[Upload]:
    parser = MultiPartParser(headers, _chunks(body), max_files=settings.max_files,
                             max_fields=settings.max_form_fields,
                             max_part_size=settings.max_form_field_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyFiles(f"more than {settings.max_files} files in one request") from None
        raise InvalidArgument(f"malformed multipart body: {exc.message}") from None
    try:
        parts = form.getlist(FIELD)
        if not parts:
            raise InvalidArgument(f"the multipart body has no field {FIELD!r}; send each image as field {FIELD!r}")
        uploads = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise InvalidArgument(f"field {FIELD!r} must be a file upload, not a text value")
            uploads.append(Upload(await part.read(), part.filename or None))
        return uploads
    finally:
        await form.close()
