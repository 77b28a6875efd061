"""Fixtures for the benchmark-harness tests: a model repository with the paired random-weight test bundles."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bundles import write_test_bundles


@pytest.fixture(scope="session")
def bench_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("bench-models")
    write_test_bundles(repo, images=64)
    return repo
