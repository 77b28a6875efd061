"""The API key check, exactly: only the whole key is accepted (never a token that merely starts with one, nor
a prefix, nor another case), the open allow-list is exactly what auth.py says, and key-configuration errors
name their source. In process: ``Access`` itself, then the real app (tests/service/asgi_app.py)."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError
from tests.service.asgi_app import SAMPLE, app

from service.core.config import Settings
from service.core.keys import KeyConfigError, load_keys, parse_keys
from service.http.auth import Access

KEY = "Key-0123456789abcdef"
OTHER = "other-key-76543210"


def access(*keys: str) -> Access:
    return Access([k.encode() for k in keys], docs=True, metrics_open=True)


@pytest.mark.parametrize("header", [
    f"Bearer {KEY}x",                 # the key and one more character
    f"Bearer {KEY}anything-at-all",   # the key as a prefix of a longer token
    f"Bearer {KEY}{OTHER}",           # two keys run together
    f"Bearer x{KEY}",                 # a character before it
    f"Bearer {KEY[:-1]}",             # all but the last character
    f"Bearer {KEY[1:]}",              # all but the first
    f"Bearer {KEY.upper()}",          # keys are case-sensitive
    f"Bearer {KEY.lower()}",
    f"Bearer {KEY} extra",            # a second word
    "Bearer ",                        # the empty bearer token
    "Bearer",
    "",
    f"Basic {KEY}",                   # another scheme with the right key
    f"Token {KEY}",
    KEY,                              # no scheme
    f"Bearer{KEY}",                   # no separator
])
def test_only_the_whole_key_is_accepted(header):
    assert not access(KEY, OTHER).allows(header.encode())


@pytest.mark.parametrize("header", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer {OTHER}",
                                    f"  Bearer   {KEY}  "])
def test_the_exact_key_of_any_configured_one_is_accepted(header):
    assert access(KEY, OTHER).allows(header.encode())


def test_no_header_is_refused_and_required_follows_the_keys():
    assert not access(KEY).allows(None)
    assert access(KEY).required is True
    assert access().required is False


def test_the_allow_list_is_exact():
    keyed = access(KEY)
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/", "/favicon.ico", "/docs",
                 "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics"):
        assert keyed.is_open(path), path
    for path in ("/predict", "/ab", "/models", "/v2", "/v2/models/x/infer", "/healthz/", "/metricsx", "/static/x"):
        assert not keyed.is_open(path), path
    keyed.open_prefixes = ("/static/",)
    assert keyed.is_open("/static/app.js") and not keyed.is_open("/static") and not keyed.is_open("/models")
    assert keyed.is_static("/") and keyed.is_static("/static/app.js") and not keyed.is_static("/models")
    assert not keyed.is_static("/healthz")  # open, but not a static file: no-store
    closed = Access([KEY.encode()], docs=False, metrics_open=False)
    for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
        assert not closed.is_open(path), path


def test_a_leading_separator_does_not_hide_the_keys():
    assert parse_keys(",a-key-0001,b-key-0002", "api_key") == [b"a-key-0001", b"b-key-0002"]
    assert parse_keys(",,\n", "api_key") == []


def test_key_errors_name_their_source_and_the_rule(tmp_path):
    with pytest.raises(KeyConfigError) as info:
        parse_keys("good-key-0001,short", "api_key")
    assert str(info.value) == ("api_key: a key of 5 characters is not 8+ printable ASCII characters "
                               "without spaces or commas")
    with pytest.raises(ValidationError) as invalid:  # the same rule makes api_key an invalid setting (exit 2)
        Settings(api_key="good-key-0001,short")
    assert "a key of 5 characters is not 8+ printable ASCII characters without spaces or commas" in str(invalid.value)
    keys = tmp_path / "keys"
    keys.write_text("tiny\n")
    with pytest.raises(KeyConfigError) as info:
        load_keys(Settings(api_key_file=keys))
    assert str(info.value).startswith("api_key_file: a key of 4 characters")
    keys.write_text(" \n")
    with pytest.raises(KeyConfigError) as info:
        load_keys(Settings(api_key_file=keys))
    assert str(info.value) == f"api_key_file {str(keys)!r} holds no key"


def test_a_key_file_with_bytes_that_are_not_utf8_is_a_key_error(tmp_path):
    keys = tmp_path / "keys"
    keys.write_bytes(b"good-key-0001\nbad-\xff\xfe-key\n")
    with pytest.raises(KeyConfigError, match="api_key_file: a key of"):  # never a UnicodeDecodeError
        load_keys(Settings(api_key_file=keys))


def test_an_unreadable_key_file_is_a_key_error_naming_it(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("good-key-0001\n")
    settings = Settings(api_key_file=keys)  # validated as a file; then it becomes a folder
    keys.unlink()
    keys.mkdir()
    try:
        load_keys(settings)
    except KeyConfigError as exc:
        message = str(exc)
    else:  # a version of auth.py without the read check: IsADirectoryError escapes, which this test refuses
        pytest.fail("an unreadable key file did not raise KeyConfigError")
    assert message.startswith(f"api_key_file {str(keys)!r} ")
    if "cannot be read" in message:
        assert f"cannot be read by uid {os.getuid()}: Is a directory (" in message


# --- the same through the real app ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed():
    with app(api_key=f"{KEY},{OTHER}") as a:
        yield a


@pytest.mark.parametrize("header", ["Bearer " + KEY + "x", "Bearer " + KEY[:-1], "Bearer " + KEY.swapcase(), "Bearer "])
def test_the_app_refuses_a_token_that_is_not_exactly_a_key(keyed, header):
    r = keyed.client.post("/predict", content=SAMPLE, headers={"Content-Type": "image/png", "Authorization": header})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert r.json()["error"]["message"].startswith("the API key is not accepted")
    assert r.headers["www-authenticate"] == 'Bearer realm="rbn-serve"'
    r = keyed.client.get("/models", headers={"Authorization": header})
    assert r.status_code == 401


def test_the_app_takes_the_exact_key_and_says_when_none_was_sent(keyed):
    r = keyed.client.post("/predict", content=SAMPLE, headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200, r.text
    assert keyed.client.get("/models", headers={"Authorization": f"Bearer {OTHER}"}).status_code == 200
    r = keyed.client.get("/models")
    assert r.status_code == 401 and r.json()["error"]["message"].startswith("this route needs an API key")


def test_the_app_leaves_exactly_the_allow_list_and_the_page_files_open(keyed):
    for path in ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready", "/metrics", "/openapi.json", "/"):
        assert keyed.client.get(path).status_code == 200, path
    assert keyed.client.get("/static/app.js").status_code == 200  # a StaticFiles mount (service/http/web/page.py)
    assert keyed.client.get("/static/no-such-file.js").status_code == 404  # open: the mount's own answer
    for path in ("/models", "/v2", "/v2/models/fmnist-resnet20-rbn", "/ab/summary", "/staticx/app.js"):
        assert keyed.client.get(path).status_code == 401, path


def test_the_page_files_may_be_cached_and_nothing_else(keyed):
    assert keyed.client.get("/").headers.get("cache-control") != "no-store"  # revalidated by ETag
    assert keyed.client.get("/static/app.js").headers.get("cache-control") != "no-store"
    assert keyed.client.get("/healthz").headers["cache-control"] == "no-store"
    assert keyed.client.get("/models", headers={"Authorization": f"Bearer {KEY}"}).headers["cache-control"] == "no-store"


def test_docs_and_metrics_close_when_configured():
    with app(api_key=KEY, docs=False, metrics_require_key=True) as locked:
        assert locked.client.get("/metrics").status_code == 401
        assert locked.client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
        assert locked.client.get("/openapi.json", headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
        assert locked.client.get("/healthz").status_code == 200


def test_a_fresh_app_opens_its_page_files_docs_and_metrics_from_the_first_request():
    """The first request of an app reads its static mounts (the gate does it once): nothing else may come first."""
    with app(api_key=KEY) as fresh:
        first = fresh.client.get("/static/app.js")
        assert first.status_code == 200 and first.headers.get("cache-control") != "no-store"
        assert fresh.client.get("/samples/fashion-mnist/labels.json").status_code == 200
        for path in ("/openapi.json", "/docs", "/metrics", "/"):
            assert fresh.client.get(path).status_code == 200, path
        assert fresh.client.get("/models").status_code == 401
