"""``install(app)``: the page at ``/``, its assets under ``/static``, the shipped sample images under
``/samples`` and the API documentation with locally served Swagger UI and ReDoc assets.

The page and the samples are static files: ``StaticFiles`` mounts, which ``service.http.auth`` leaves open
(they carry no data; the page asks its user for the API key when an API call answers 401).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles

from rbn.contract.corruptions import CORRUPTION_NAMES

STATIC = Path(__file__).with_name("static")
SAMPLES_PACKAGE = "rbn_serve_samples"  # pyproject maps the repository's samples/ to it, as models/ to rbn_serve_models
DOCS_ASSETS_PACKAGE = "fastapi_offline"  # ships Swagger UI's and ReDoc's built files
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
DOCS_LINK = '<a href="/docs">API docs</a> '  # in index.html's header
# The page may load only from its own origin: a browser-enforced "no request leaves the machine".
PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
               "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def _package_folder(name: str, probe: str) -> Path | None:
    """The folder of an installed (data) package holding ``probe``, or None."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        if any(Path(location).glob(probe)):
            return Path(location)
    return None


def samples_folder() -> Path | None:
    """The shipped samples: the wheel's data package, else a checkout's ``samples/`` (an older editable install)."""
    folder = _package_folder(SAMPLES_PACKAGE, "*/labels.json")
    if folder is None:
        checkout = Path(__file__).resolve().parents[2] / "samples"
        folder = checkout if any(checkout.glob("*/labels.json")) else None
    return folder


def docs_assets_folder() -> Path:
    folder = _package_folder(DOCS_ASSETS_PACKAGE, "static/swagger-ui-bundle.js")
    if folder is None:
        raise RuntimeError(f"the {DOCS_ASSETS_PACKAGE} package (Swagger UI's files) is not installed")
    return folder / "static"


def install(app: FastAPI) -> None:
    """Add the page, its assets and the samples, and serve the app's /docs and /redoc (where it has them:
    ``FastAPI(docs_url=None)`` turns them off) from local assets instead of FastAPI's CDN pages."""

    # The corruption names the server knows, written into the page once (they hold no data, and the
    # page must not depend on /openapi.json, which --no-docs turns off).
    service = getattr(app.state, "service", None)  # its settings say how many worker processes share the port
    workers = service.settings.workers if service is not None else 1
    shell = (STATIC / "index.html").read_text().replace("__CORRUPTIONS__", ",".join(CORRUPTION_NAMES))
    shell = shell.replace("__WORKERS__", str(workers))
    if app.openapi_url is None or app.docs_url is None:  # --no-docs: no link to a page that is not there
        shell = shell.replace(DOCS_LINK, "")
    headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache"}

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(shell, headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    samples = samples_folder()
    if samples is not None:
        app.mount("/samples", StaticFiles(directory=samples), name="samples")
    if app.openapi_url is not None and (app.docs_url or app.redoc_url):
        _install_docs(app, app.openapi_url)


def _install_docs(app: FastAPI, openapi_url: str) -> None:
    # FastAPI's own pages load Swagger UI and ReDoc from a CDN: replace them at the same URLs.
    docs_url, redoc_url = app.docs_url, app.redoc_url
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in (docs_url, redoc_url)]
    assets = docs_assets_folder()

    # ReDoc's bundle shows Redocly's logo from their CDN (an <img> in the sidebar): served patched to show
    # our own favicon instead, so /redoc, like /docs, loads nothing from elsewhere. Before the mount, which
    # would otherwise answer this path; under the mount's prefix, so it is open like the other assets.
    @functools.cache
    def redoc_bundle() -> bytes:
        return (assets / "redoc.standalone.js").read_bytes().replace(REDOC_CDN_LOGO, b"/docs-assets/favicon.png")

    async def redoc_js() -> Response:
        return Response(redoc_bundle(), media_type="application/javascript")

    app.add_api_route("/docs-assets/redoc.standalone.js", redoc_js, methods=["GET"], include_in_schema=False)
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    title = f"{app.title} - API"
    oauth2_redirect = app.swagger_ui_oauth2_redirect_url if docs_url else None

    async def swagger() -> HTMLResponse:
        # validatorUrl None: Swagger UI would otherwise send the schema to an online validator.
        return get_swagger_ui_html(openapi_url=openapi_url, title=title,
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png", oauth2_redirect_url=oauth2_redirect,
                                   swagger_ui_parameters={"validatorUrl": None})

    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=title, redoc_js_url="/docs-assets/redoc.standalone.js",
                              redoc_favicon_url="/docs-assets/favicon.png", with_google_fonts=False)

    if docs_url:
        app.add_api_route(docs_url, swagger, methods=["GET"], include_in_schema=False)
    if redoc_url:
        app.add_api_route(redoc_url, redoc, methods=["GET"], include_in_schema=False)
