"""Schemathesis over /openapi.json against a real server process: every check except positive data
acceptance (an image API cannot accept every byte string its schema allows) reports no failure.

Bounded: deterministic generation, 20 examples per operation, no example database (deterministic mode keeps none)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.service.svc_support import start_server


@pytest.fixture(scope="module")
def fresh_server(bundle_repo, tmp_path_factory):
    """A server of its own: the fuzzing must not move the shared server's counters."""
    with start_server(bundle_repo, tmp_path_factory.mktemp("schemathesis"), max_batch_size=8) as proc:
        yield proc


@pytest.mark.timeout(600)  # schemathesis is allowed 240 s, after a server start
def test_openapi_schema_holds_under_schemathesis(fresh_server, tmp_path):
    cli = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [str(cli), "run", f"{fresh_server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", "positive_data_acceptance", "--max-examples", "20", "--generation-deterministic",
         "--request-timeout", "30", "--no-color"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "No issues found" in result.stdout, result.stdout[-3000:]
