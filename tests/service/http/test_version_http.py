"""One version, pyproject.toml's, reported by /v2, /models, rbn_serve_build_info and `rbn-serve --version`."""

from __future__ import annotations

import platform
import subprocess
import sys
import tomllib

import onnxruntime
from tests.service.svc_support import ROOT


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


def test_server_metadata_models_and_build_info_report_the_project_version(client):
    version = project_version()
    assert client.get("/v2").json()["version"] == version
    assert client.get("/models").json()["server_version"] == version
    assert client.get("/openapi.json").json()["info"]["version"] == version
    line = (f'rbn_serve_build_info{{onnxruntime="{onnxruntime.__version__}",python="{platform.python_version()}",'
            f'version="{version}"}} 1.0')
    assert line in client.get("/metrics").text.splitlines()


def test_cli_version():
    out = subprocess.run([sys.executable, "-m", "service", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"rbn-serve {project_version()}"
