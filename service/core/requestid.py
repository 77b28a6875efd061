"""Request ids: accept the client's ``X-Request-ID`` when it is short and plain, else make one.

The id of the request being handled lives in a context variable, so log lines (``service.core.logs``) and
error bodies (``service.core.errors``) carry it without being handed it; so does a check of whether its
client is still connected (``client_gone``), which the batcher reads to drop work nobody waits for.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from contextvars import ContextVar

HEADER = b"x-request-id"
MAX_LENGTH = 128
# Letters, digits and . _ : - (UUIDs, trace ids, ULIDs): nothing that could split a log line or a header.
_SAFE = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}" % MAX_LENGTH)

_bits = random.Random().getrandbits  # seeded from os.urandom once per process

current: ContextVar[str | None] = ContextVar("request_id", default=None)
client_gone: ContextVar[Callable[[], bool] | None] = ContextVar("client_gone", default=None)


def gone_check(receive) -> Callable[[], bool] | None:
    """A zero-cost "has the client disconnected?" for uvicorn's ``receive`` (its request cycle's flag),
    None for other servers."""
    cycle = getattr(receive, "__self__", None)
    if cycle is None or not hasattr(cycle, "disconnected"):
        return None
    return lambda: cycle.disconnected


def new() -> str:
    """A fresh id: 16 random hex digits (unique, not secret: no system call per request)."""
    return f"{_bits(64):016x}"


def accept(value: bytes | None) -> str:
    """The client's id when it is 1..128 safe characters, else a fresh one (never an error)."""
    if value is not None and _SAFE.fullmatch(value):
        return value.decode("ascii")
    return new()
