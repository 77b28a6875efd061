"""API keys over HTTP: which paths stay open without one (the keys and the check: ``service.core.keys``).

One mechanism for every route: ``service.http.middleware`` asks ``Access.allows`` before any route (the
raw-image fast path included) runs, so a route added later needs the key unless it is on the
allow-list here. Open without a key: the probes (``/healthz``, ``/readyz``, ``/v2/health/live``,
``/v2/health/ready``), the page shell ``/`` and whatever a ``StaticFiles`` mount serves (they carry
no data: the page asks its user for the key), ``/docs`` and ``/openapi.json`` unless ``--no-docs``
(they describe the API, the same for every deployment), and ``/metrics`` unless
``--metrics-require-key``. Keys never reach a log line: ``Settings`` holds them as ``SecretStr``.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from service.core.config import Settings
from service.core.keys import Keys, load_keys

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
PAGE = ("/", "/favicon.ico")
DOCS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")
METRICS = "/metrics"
CHALLENGE = 'Bearer realm="rbn-serve"'


class Access(Keys):
    """The key check (``service.core.keys.Keys``) and the allow-list of paths open without a key, built once
    per app."""

    def __init__(self, keys: Iterable[bytes], *, docs: bool, metrics_open: bool) -> None:
        super().__init__(keys)
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
