"""The page against a server that requires an API key (and publishes no /docs or /openapi.json): the
first API call's 401 (WWW-Authenticate: Bearer) opens the key dialog, a wrong key is refused and asked
again, the right one is kept for the tab only (sessionStorage: a reload keeps it, a new tab asks again)
and sent as a Bearer token on every API call."""

from __future__ import annotations

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from web_support import SAMPLES, PageServer, console_errors, is_local, requests_sent, until

KEY = "web-test-key-0123456789"
STORAGE = "rbn-serve-api-key"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    with PageServer(tmp_path_factory.mktemp("keyed") / "server.log", "--no-docs", api_key=KEY).wait_ready() as server:
        yield server


def dialog_open(driver) -> bool:
    return driver.execute_script("return document.getElementById('key-dialog').open")


def enter_key(driver, key: str) -> None:
    until(driver, dialog_open, "the key dialog")
    field = driver.find_element(By.ID, "key-input")
    assert driver.switch_to.active_element == field  # focus is in the dialog: type and press Enter
    field.send_keys(key, Keys.ENTER)


def ready(driver) -> bool:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true"


def test_the_page_asks_for_the_key_and_keeps_it_for_the_tab(browser, keyed_server):
    d = browser
    for path in ("/openapi.json", "/docs"):  # --no-docs: not there (and, like any unknown path, behind the key)
        assert httpx.get(keyed_server.url + path, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404
    d.get(keyed_server.url + "/")  # the shell and its assets are open
    enter_key(d, "not-the-key-000")
    until(d, lambda d: d.find_element(By.ID, "key-error").text == "The server refused that key.", "the refusal")
    assert dialog_open(d) and not ready(d)
    d.find_element(By.ID, "key-input").send_keys(KEY, Keys.ENTER)
    until(d, ready, "the page to start with the key")
    assert not dialog_open(d)
    assert len(d.find_elements(By.CSS_SELECTOR, "#corruption option")) == 1 + 14  # none + every corruption
    assert d.find_elements(By.CSS_SELECTOR, "a[href='/docs']") == []  # --no-docs: no dead link
    assert d.execute_script(f"return sessionStorage.getItem('{STORAGE}')") == KEY
    assert d.execute_script(f"return localStorage.getItem('{STORAGE}')") is None

    before = requests_sent(d)
    assert all(is_local(r["url"], keyed_server.url) for r in before)
    models = [r for r in before if r["url"] == keyed_server.url + "/models"]
    assert [r["headers"].get("Authorization") for r in models] == [None, "Bearer not-the-key-000", f"Bearer {KEY}"]

    sample = SAMPLES / "fashion-mnist" / "2_trouser.png"
    d.find_element(By.ID, "file").send_keys(str(sample))
    until(d, lambda d: d.find_element(By.ID, "result").get_attribute("data-seq"), "a comparison with the key")
    answer = httpx.post(keyed_server.url + "/ab", content=sample.read_bytes(), timeout=60,
                        headers={"Content-Type": "image/png", "Authorization": f"Bearer {KEY}"})
    assert d.find_element(By.CSS_SELECTOR, "#arm-rbn .predicted").text == answer.json()["results"][0]["arms"]["rbn"]["label"]
    assert httpx.post(keyed_server.url + "/ab", content=sample.read_bytes(), timeout=60).status_code == 401
    sent = [r for r in requests_sent(d) if r["url"].startswith(keyed_server.url + "/ab")]  # /ab and /ab/summary
    assert sent and all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in sent)
    # Only the two refused calls reached the console (Chrome reports every 401 as an error).
    assert all(" 401 " in e["message"] for e in console_errors(d))

    d.refresh()  # the same tab: no question
    until(d, ready, "the reloaded page")
    assert not dialog_open(d)
    d.switch_to.new_window("tab")  # another tab: sessionStorage is not shared
    d.get(keyed_server.url + "/")
    until(d, dialog_open, "the key dialog in a new tab")
    enter_key(d, KEY)
    until(d, ready, "the new tab with the key")
    d.find_element(By.ID, "forget-key").click()
    assert d.execute_script(f"return sessionStorage.getItem('{STORAGE}')") is None
    d.close()
    d.switch_to.window(d.window_handles[0])
