"""The page at / and the offline API docs over HTTP: what is served, from where, and how big."""

from __future__ import annotations

import json

import httpx
import pytest
from web_support import SAMPLES, STATIC, is_local, references

from rbn.contract.corruptions import CORRUPTION_NAMES

PAGE_BUDGET = 250_000  # bytes: the page and every asset it loads


def test_page_and_its_assets_are_served_within_budget_from_this_origin(http, page_server):
    page = http.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    # The browser itself refuses any load from elsewhere.
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    urls = references(page.text)
    assert urls and all(is_local(u, page_server.url) for u in urls), urls
    # the corruption menu comes with the page (it must work with --no-docs, without /openapi.json)
    assert f'<body data-corruptions="{",".join(CORRUPTION_NAMES)}" data-workers="1">' in page.text and len(CORRUPTION_NAMES) == 14
    assets = [u for u in urls if u.startswith("/static/")]
    assert sorted(assets) == ["/static/app.css", "/static/app.js"]
    total = len(page.content)
    for url in assets:
        answer = http.get(url)
        assert answer.status_code == 200, url
        assert answer.content == (STATIC / url.removeprefix("/static/")).read_bytes()
        total += len(answer.content)
    assert total <= PAGE_BUDGET, f"page + assets = {total} bytes"


def test_shipped_samples_are_served(http):
    listed = http.get("/samples/fashion-mnist/labels.json").json()
    assert listed == json.loads((SAMPLES / "fashion-mnist" / "labels.json").read_text())
    first = listed[0]["file"]
    assert http.get(f"/samples/fashion-mnist/{first}").content == (SAMPLES / "fashion-mnist" / first).read_bytes()
    # Percent-encoded: httpx (like a browser) folds a literal "/../" away before sending, so
    # "/samples/../pyproject.toml" would only ever ask for /pyproject.toml. These reach the mounts.
    for path in ("/samples/%2e%2e/%2e%2e/pyproject.toml", "/samples/..%2f..%2fpyproject.toml",
                 "/static/%2e%2e/page.py", "/static/..%2fpage.py"):
        assert httpx.URL(path).raw_path == path.encode()  # sent as written
        assert http.get(path).status_code == 404, path


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_api_docs_reference_only_local_urls(http, page_server, path):
    page = http.get(path)
    assert page.status_code == 200
    urls = references(page.text)
    assert "/openapi.json" in urls and all(is_local(u, page_server.url) for u in urls), urls
    for url in urls:
        if url.startswith("/docs-assets/"):
            asset = http.get(url)
            assert asset.status_code == 200 and len(asset.content) > 1000, url
    if path == "/docs":
        assert '"validatorUrl": null' in page.text  # no schema sent to Swagger's online validator
    else:  # ReDoc's bundle would show Redocly's logo from their CDN; it is served with our favicon instead
        bundle = http.get("/docs-assets/redoc.standalone.js")
        assert bundle.status_code == 200 and bundle.headers["content-type"].startswith("application/javascript")
        assert b"cdn.redoc.ly" not in bundle.content and b'src:"/docs-assets/favicon.png"' in bundle.content
    # Swagger UI's bundle may name URLs in its code; none is loaded without the page asking (tests/web/test_browser.py)
