"""The request context: what the core knows about the request it is serving, whatever the protocol.

A front end (HTTP today, gRPC next) fills one ``RequestContext`` per request and enters it for the
request's duration; the core reads it without being handed it: log lines (``service.core.logs``) and
error bodies carry its id, the batcher drops work whose client has gone or whose deadline has passed.
Request ids: the client's own when it is short and plain, else a fresh one.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass

MAX_ID_LENGTH = 128
# Letters, digits and . _ : - (UUIDs, trace ids, ULIDs): nothing that could split a log line or a header.
_SAFE = re.compile(rb"[A-Za-z0-9._:\-]{1,%d}" % MAX_ID_LENGTH)

_bits = random.Random().getrandbits  # seeded from os.urandom once per process


@dataclass(slots=True)
class RequestContext:
    """One request, as the core sees it."""

    request_id: str
    client_gone: Callable[[], bool] | None = None  # true once the client has disconnected; None: unknown
    deadline: float | None = None  # time.monotonic() after which nobody waits for the answer; None: no deadline
    principal: str | None = None  # which API key was accepted (its label, never the key); None: keys are off
    protocol: str = "http"  # the front end: a small fixed set ("http", "grpc"), usable as a metric label

    def expired(self, now: float | None = None) -> bool:
        """Whether the deadline has passed."""
        return self.deadline is not None and (time.monotonic() if now is None else now) > self.deadline


current: ContextVar[RequestContext | None] = ContextVar("request_context", default=None)


def enter(context: RequestContext) -> Token:
    """Make ``context`` the current request's until ``leave`` (``token``)."""
    return current.set(context)


def leave(token: Token) -> None:
    current.reset(token)


def request_id() -> str | None:
    """The current request's id, None outside a request."""
    context = current.get()
    return None if context is None else context.request_id


def new_id() -> str:
    """A fresh id: 16 random hex digits (unique, not secret: no system call per request)."""
    return f"{_bits(64):016x}"


def accept_id(value: bytes | None) -> str:
    """The client's id when it is 1..128 safe characters, else a fresh one (never an error)."""
    if value is not None and _SAFE.fullmatch(value):
        return value.decode("ascii")
    return new_id()
