"""Fixtures of the page tests: one real server on the shipped bundles for the module that asks for it."""

from __future__ import annotations

import httpx
import pytest
from web_support import PageServer


@pytest.fixture(scope="module")
def page_server(tmp_path_factory):
    server = PageServer(tmp_path_factory.mktemp("page") / "server.log").wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(page_server):
    with httpx.Client(base_url=page_server.url, timeout=60) as client:
        yield client
