"""Fixtures of the page tests: a real server on the shipped bundles and a headless Chromium, per module."""

from __future__ import annotations

import httpx
import pytest
from web_support import PageServer, start_browser


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    with PageServer(tmp_path_factory.mktemp("page") / "server.log").wait_ready() as server:
        yield server


@pytest.fixture(scope="module")
def http(page_server):
    with httpx.Client(base_url=page_server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = start_browser(tmp_path_factory.mktemp("chromium"))
    yield driver
    driver.quit()
