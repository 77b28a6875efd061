"""Logging set-up: plain text or one JSON object per line, for our loggers and uvicorn's; a line logged
while a request is handled carries its request id."""

from __future__ import annotations

import logging
import time

import orjson

from service.core import context


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on each record (``request_id``; ``rid`` is " [id]" or "" for text)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = context.request_id()
        if not hasattr(record, "request_id"):
            record.request_id = rid
        record.rid = f" [{record.request_id}]" if record.request_id else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "request_id", None):
            entry["request_id"] = record.request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(fmt: str = "text", level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s%(rid)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
