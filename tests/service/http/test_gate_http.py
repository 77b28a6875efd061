"""The request gate on a real server: API keys on every data route (the raw-image fast path too),
the open allow-list, request ids, security headers, and odd headers answered 400, never 500."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from pydantic import SecretStr

from service.core.keys import KeyConfigError, load_keys, parse_keys
from service.http.auth import Access
from service.core.config import Settings
from tests.reliability.rel_support import RBN, SAMPLE, raw, start, status_of

KEYS = ("key-one-11111111", "key-two-22222222")
FILE_KEY = "key-file-33333333"
PNG = {"Content-Type": "image/png"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keyed")
    key_file = tmp / "keys"
    key_file.write_text(f"\n{FILE_KEY}\n")
    with start(tmp, api_key=",".join(KEYS), api_key_file=key_file, access_log=True, log_format="json") as proc:
        yield proc


@pytest.fixture(scope="module")
def locked(tmp_path_factory):
    """Metrics behind the key, no docs."""
    with start(tmp_path_factory.mktemp("locked"), api_key=KEYS[0], metrics_require_key=True, docs=False) as proc:
        yield proc


# --- keys and the allow-list, without a server -------------------------------------------------
def test_keys_are_split_on_commas_and_whitespace_and_checked():
    assert parse_keys(" a-key-0001, b-key-0002\nc-key-0003 ", "x") == [b"a-key-0001", b"b-key-0002", b"c-key-0003"]
    for bad in ("shorty1", "caf\u00e9-key-0001", "ctl\x7fkey-0001"):
        with pytest.raises(KeyConfigError) as info:
            parse_keys(bad, "api_key")
        assert bad not in str(info.value)  # a key is never quoted: the message is logged


def test_a_key_file_adds_keys_and_an_empty_one_fails(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("file-key-0001\n")
    assert load_keys(Settings(api_key="env-key-0001", api_key_file=keys)) == (b"env-key-0001", b"file-key-0001")
    keys.write_text("\n \n")
    with pytest.raises(KeyConfigError, match="holds no key"):
        load_keys(Settings(api_key_file=keys))
    assert load_keys(Settings()) == ()


def test_the_key_never_shows_in_the_settings_repr():
    settings = Settings(api_key="secret-key-0001")
    assert isinstance(settings.api_key, SecretStr)
    assert "secret-key-0001" not in repr(settings) and "secret-key-0001" not in str(settings.model_dump())


def test_access_accepts_any_current_key_as_bearer_only():
    access = Access([b"k-00000001", b"k-00000002"], docs=True, metrics_open=True)
    assert access.allows(b"Bearer k-00000001") and access.allows(b"bearer  k-00000002 ")
    for header in (None, b"", b"Bearer", b"Bearer k-00000003", b"Basic k-00000001", b"k-00000001", b"Bearer k-0000000"):
        assert not access.allows(header), header
    assert access.is_open("/healthz") and access.is_open("/metrics") and access.is_open("/docs")
    assert not access.is_open("/predict") and not access.is_open("/models") and not access.is_open("/v2")
    closed = Access([b"k-00000001"], docs=False, metrics_open=False)
    assert not closed.is_open("/metrics") and not closed.is_open("/openapi.json") and closed.is_open("/readyz")


# --- on the server ----------------------------------------------------------------------------
def _routes(openapi: dict) -> list[tuple[str, str]]:
    """Every (method, concrete path) of the OpenAPI document, path parameters filled in."""
    out = []
    for template, operations in openapi["paths"].items():
        path = template.replace("{name}", RBN).replace("{version}", "1")
        path = re.sub(r"\{[^}]+\}", "x", path)
        out += [(method.upper(), path) for method in operations if method in ("get", "post", "put", "delete", "patch")]
    return out


def test_every_data_route_needs_the_key_and_the_allow_list_stays_open(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        openapi = c.get("/openapi.json").json()  # open: it describes the API, no data
        assert openapi["security"] == [{"bearer": []}]
        routes = _routes(openapi)
        assert ("POST", "/predict") in routes and ("GET", "/models") in routes
        open_paths = {"/healthz", "/readyz", "/metrics", "/docs", "/openapi.json", "/v2/health/live", "/v2/health/ready", "/"}
        checked = 0
        for method, path in routes:
            if path in open_paths:
                continue
            r = c.request(method, path, content=b"x", headers=PNG)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
            checked += 1
            wrong = c.request(method, path, content=b"x", headers={**PNG, **bearer("key-bad-00000000")})
            assert wrong.status_code == 401, (method, path)
        assert checked >= 8
        for path in ("/healthz", "/readyz", "/metrics", "/docs", "/v2/health/live", "/v2/health/ready"):
            assert c.get(path).status_code == 200, path
        assert c.get("/no-such-route").status_code == 401  # unknown paths too: nothing is learnt without a key


def test_the_raw_image_fast_path_and_multipart_check_the_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        r = c.post("/predict", content=SAMPLE, headers=PNG)
        assert r.status_code == 401
        body = r.json()["error"]
        assert body["code"] == "unauthorized" and body["request_id"] == r.headers["x-request-id"]
        assert c.post("/predict", files={"file": ("a.png", SAMPLE, "image/png")}).status_code == 401
        assert c.post(f"/v2/models/{RBN}/infer", json={}).json() == {
            "error": "this route needs an API key: send Authorization: Bearer <key>"}
        for key in (*KEYS, FILE_KEY):  # every key of the rotation, from the variable and the file
            r = c.post("/predict", content=SAMPLE, headers={**PNG, **bearer(key)})
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "Ankle boot"
            r = c.post("/predict", files={"file": ("a.png", SAMPLE, "image/png")}, headers=bearer(key))
            assert r.status_code == 200
        text = c.get("/metrics").text
    assert 'rbn_serve_rejected_requests_total{reason="unauthorized",route="unmatched"}' in text
    log = keyed.log()
    for key in (*KEYS, FILE_KEY):
        assert key not in log


def test_request_ids_are_accepted_or_made_returned_and_logged(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        r = c.get("/models", headers={**bearer(KEYS[0]), "X-Request-ID": "trace-42.a:b_c"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-42.a:b_c"
        for bad in ("a" * 129, "has space", "semi;colon", ""):
            r = c.get("/healthz", headers={"X-Request-ID": bad})
            assert re.fullmatch(r"[0-9a-f]{16}", r.headers["x-request-id"]), bad
        r = c.post("/predict", content=b"not an image", headers={**PNG, **bearer(KEYS[0]), "X-Request-ID": "bad-img-1"})
        assert r.status_code == 415 and r.json()["error"]["request_id"] == "bad-img-1"
    lines = [json.loads(line) for line in keyed.log().splitlines() if line.startswith("{")]
    assert any(e.get("request_id") == "bad-img-1" and "415" in e["message"] for e in lines), "access log line with the id"


def test_answers_carry_nosniff_and_no_store(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as c:
        for r in (c.get("/healthz"), c.post("/predict", content=SAMPLE, headers={**PNG, **bearer(KEYS[1])}),
                  c.post("/predict", content=SAMPLE, headers=PNG), c.get("/metrics"),
                  c.get("/models", headers=bearer(KEYS[1]))):
            assert r.headers["x-content-type-options"] == "nosniff", r.url
            assert r.headers["cache-control"] == "no-store", r.url
        for path in ("/", "/static/app.js"):  # the page's files: open, cacheable (they revalidate by ETag)
            r = c.get(path)
            assert r.status_code == 200 and r.headers["x-content-type-options"] == "nosniff", path
            assert "no-store" not in r.headers.get("cache-control", ""), path


def test_metrics_can_require_the_key_and_docs_can_be_off(locked):
    with httpx.Client(base_url=locked.url, timeout=60) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer(KEYS[0])).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
        for path in ("/docs", "/openapi.json"):
            assert c.get(path, headers=bearer(KEYS[0])).status_code == 404, path


@pytest.mark.parametrize("head", [
    b"POST /v2/models/%s/infer HTTP/1.1\r\nInference-Header-Content-Length: \xb2\r\nContent-Length: 2\r\n" % RBN.encode(),
    b"POST /v2/models/%s/infer HTTP/1.1\r\nInference-Header-Content-Length: \xd9\xa3\r\nContent-Length: 2\r\n" % RBN.encode(),
    b"POST /v2/models/%s/infer HTTP/1.1\r\nInference-Header-Content-Length: 1\r\nInference-Header-Content-Length: 2\r\nContent-Length: 2\r\n" % RBN.encode(),
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 2\r\nContent-Length: 3\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 2\r\nContent-Length: 2\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: \xb2\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: +2\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n",
    b"POST /predict HTTP/1.1\r\nContent-Type: image/png\r\nAuthorization: Bearer key-one-11111111\r\nAuthorization: Bearer x\r\nContent-Length: 2\r\n",
    b"POST /predict?top_k=\xb2 HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 2\r\n",
    b"POST /predict?top_k=%C2%B2 HTTP/1.1\r\nContent-Type: image/png\r\nContent-Length: 2\r\n",
])
def test_odd_headers_are_400_never_500(keyed, head):
    auth = b"" if b"Authorization" in head else b"Authorization: Bearer key-one-11111111\r\n"
    response = raw(keyed.port, head + b"Host: x\r\n" + auth + b"\r\n{}")
    assert 400 <= status_of(response) < 500, response[:300]
    if b"top_k" not in head:
        assert status_of(response) == 400, response[:300]
