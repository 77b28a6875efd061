"""Fixtures for the service tests: test bundles (the shipped ones under test names; no torch), sample
images, and real server processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import pytest
from tests.service.svc_support import BN, BROKEN, MAX_BODY, MAX_FILES, MAX_PIXELS, RBN, SAMPLES, start_server

from tests.shipped_bundles import write_test_bundles


@pytest.fixture(scope="session")
def bundle_repo(tmp_path_factory) -> Path:
    """A clean repository with the two valid test bundles (the shipped pair as test-resnet20-{rbn,bn})."""
    repo = tmp_path_factory.mktemp("models")
    write_test_bundles(repo)
    return repo


@pytest.fixture(scope="session")
def served_repo(bundle_repo, tmp_path_factory) -> Path:
    """The test bundles plus one whose config.pbtxt does not match its model.json (skipped, never fatal)."""
    repo = tmp_path_factory.mktemp("served")
    for name in (RBN, BN):
        shutil.copytree(bundle_repo / name, repo / name)
    shutil.copytree(bundle_repo / BN, repo / BROKEN)
    meta = json.loads((repo / BROKEN / "model.json").read_text())
    meta["name"] = BROKEN
    (repo / BROKEN / "model.json").write_text(json.dumps(meta))
    return repo


@pytest.fixture(scope="session")
def fmnist_samples() -> list[tuple[str, bytes, int]]:
    """(file name, PNG bytes, label index) from the shipped sample."""
    folder = SAMPLES / "fashion-mnist"
    entries = json.loads((folder / "labels.json").read_text())[:24]
    return [(e["file"], (folder / e["file"]).read_bytes(), int(e["label"])) for e in entries]


@pytest.fixture(scope="session")
def photos() -> list[tuple[str, bytes, int]]:
    folder = SAMPLES / "photos"
    entries = json.loads((folder / "labels.json").read_text())
    return [(e["file"], (folder / e["file"]).read_bytes(), int(e["label"])) for e in entries]


@pytest.fixture(scope="session")
def server(served_repo, tmp_path_factory):
    """One server for most HTTP tests: every shadow request runs, small limits."""
    with start_server(served_repo, tmp_path_factory.mktemp("server"), shadow_fraction=1.0, max_batch_size=16,
                      max_body_bytes=MAX_BODY, max_image_pixels=MAX_PIXELS, max_files=MAX_FILES) as proc:
        yield proc


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c
