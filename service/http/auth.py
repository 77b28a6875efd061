"""API keys: which keys the server accepts, which paths stay open without one, and the check.

One mechanism for every route: ``service.http.middleware`` asks ``Access.allows`` before any route (the
raw-image fast path included) runs, so a route added later needs the key unless it is on the
allow-list here. Open without a key: the probes (``/healthz``, ``/readyz``, ``/v2/health/live``,
``/v2/health/ready``), the page shell ``/`` and whatever a ``StaticFiles`` mount serves (they carry
no data: the page asks its user for the key), ``/docs`` and ``/openapi.json`` unless ``--no-docs``
(they describe the API, the same for every deployment), and ``/metrics`` unless
``--metrics-require-key``. Keys never reach a log line: ``Settings`` holds them as ``SecretStr``.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterable

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from service.core.config import API_KEY, Settings

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
PAGE = ("/", "/favicon.ico")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
METRICS = "/metrics"
CHALLENGE = 'Bearer realm="rbn-serve"'

# A key is printable ASCII without spaces or commas (those separate keys), at least 8 characters: the rule
# Settings checks api_key with (an invalid setting, exit 2); a key file's keys are checked here at start-up.
_KEY = API_KEY


class KeyConfigError(ValueError):
    """The configured keys are unusable (empty file, a key with odd characters)."""


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys separated by commas, spaces or new lines; each printable ASCII, 8 characters or more."""
    keys = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        if not _KEY.fullmatch(item):
            # Never quote the key itself: this message is logged.
            raise KeyConfigError(f"{source}: a key of {len(item)} characters is not 8+ printable ASCII characters "
                                 "without spaces or commas")
        keys.append(item.encode("ascii"))
    return keys


def load_keys(settings: Settings) -> tuple[bytes, ...]:
    """Every accepted key from ``api_key`` and ``api_key_file``; empty when no key is required."""
    keys: list[bytes] = []
    if settings.api_key is not None:
        keys += parse_keys(settings.api_key.get_secret_value(), "api_key")
    if settings.api_key_file is not None:
        try:
            text = settings.api_key_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:  # e.g. a secret of mode 0600 owned by another uid than the server's
            raise KeyConfigError(f"api_key_file {str(settings.api_key_file)!r} cannot be read by uid {os.getuid()}: "
                                 f"{exc.strerror or exc} (make it readable by that user, e.g. mode 0644 or chown)") from None
        from_file = parse_keys(text, "api_key_file")
        if not from_file:
            raise KeyConfigError(f"api_key_file {str(settings.api_key_file)!r} holds no key")
        keys += from_file
    return tuple(dict.fromkeys(keys))


class Access:
    """The allow-list and the key check, built once per app."""

    def __init__(self, keys: Iterable[bytes], *, docs: bool, metrics_open: bool) -> None:
        self.keys = tuple(keys)
        self.required = bool(self.keys)
        open_paths = {*PROBES, *PAGE}
        if docs:
            open_paths.update(DOCS)
        if metrics_open:
            open_paths.add(METRICS)
        self.open_paths = frozenset(open_paths)
        self.open_prefixes: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        return cls(load_keys(settings), docs=settings.docs, metrics_open=not settings.metrics_require_key)

    def open_static_mounts(self, routes: Iterable[BaseRoute]) -> None:
        """Open the paths under every ``StaticFiles`` mount (page assets carry no data)."""
        self.open_prefixes = tuple(
            route.path.rstrip("/") + "/" for route in routes if isinstance(route, Mount) and isinstance(route.app, StaticFiles)
        )

    def is_static(self, path: str) -> bool:
        """The page shell or a file of a ``StaticFiles`` mount (no data: they may be cached)."""
        return path == "/" or (bool(self.open_prefixes) and path.startswith(self.open_prefixes))

    def is_open(self, path: str) -> bool:
        return path in self.open_paths or (bool(self.open_prefixes) and path.startswith(self.open_prefixes))

    def allows(self, authorization: bytes | None) -> bool:
        """``Authorization: Bearer <key>`` with an accepted key; every key is compared, in constant time."""
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        matched = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(token, key)
        return matched
