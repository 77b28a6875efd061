"""Fixtures for the deployment tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from deploy_support import ROOT, repository_has_bundles

from tests.bundles import write_test_bundles


@pytest.fixture(scope="session")
def source_repository(tmp_path_factory) -> Path:
    """What the image bakes in at /models: the repository's models/ when it holds bundles, else a pair of
    random-weight test bundles (RBN + BN baseline) written the way rbn's exporter writes them."""
    if repository_has_bundles(ROOT / "models"):
        return ROOT / "models"
    repo = tmp_path_factory.mktemp("bundles")
    write_test_bundles(repo, prefix="deploy")
    return repo
