"""bench/gpu_check.sh takes its wheel list from the image's resolver (docker/image_requirements.py +
docker/constraints.txt through pip), so transitive dependencies come along, and says which wheel is missing.

No GPU here: the fetch and the offline install run for real with the `cpu` variant for this Python (the
same code path as `gpu` for the GPU machine's Python, with small wheels); the GPU run itself is not tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT

# longer than the suite's per-test timeout: the wheelhouse fixture downloads the GPU image's wheels
# (up to 300 s)
pytestmark = pytest.mark.timeout(600)

SCRIPT = ROOT / "bench" / "gpu_check.sh"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def gpu_check(*args: str, timeout: float = 300, offline: bool = False, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    if offline:  # as on the GPU machine: no index, no wheel folder but PARTS_DIR (this machine's pip config has both)
        full = {k: v for k, v in full.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=full, capture_output=True, text=True,
                          timeout=timeout, check=False)


def image_list(variant: str) -> list[str]:
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "image_requirements.py"), variant,
                           str(ROOT / "pyproject.toml")], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize("variant", ["gpu", "gpu-host"])
def test_the_list_is_the_gpu_image_list(variant):
    done = gpu_check("--print-requirements", GPU_CHECK_VARIANT=variant)
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split()
    assert listed == image_list(variant)
    (cpu_runtime,) = [r for r in image_list("cpu") if r.startswith("onnxruntime==")]
    version = cpu_runtime.split("==")[1]
    wheels = {"gpu": f"onnxruntime-gpu[cuda,cudnn]=={version}", "gpu-host": f"onnxruntime-gpu=={version}"}
    assert [r for r in listed if r.startswith("onnxruntime")] == [wheels[variant]]
    assert set(image_list("cpu")) - {cpu_runtime} <= set(listed)  # every other service dependency


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("parts")
    done = gpu_check("--fetch", str(folder), GPU_CHECK_VARIANT="cpu", FETCH_PYTHON_VERSION=PYTHON_VERSION)
    assert done.returncode == 0, done.stdout + done.stderr
    return folder


def test_fetch_brings_the_transitive_dependencies(wheelhouse):
    names = {p.name.split("-")[0].lower() for p in wheelhouse.glob("*.whl")}
    listed = {r.split("==")[0].split(">")[0].split("[")[0].replace("-", "_").lower() for r in image_list("cpu")}
    assert listed <= names, listed - names
    # never listed in pyproject.toml: what fastapi, pydantic and uvicorn depend on
    assert {"starlette", "pydantic_core", "annotated_types", "typing_inspection", "h11", "anyio"} <= names


def test_offline_install_resolves_from_the_folder_and_names_a_missing_wheel(wheelhouse, tmp_path):
    site = tmp_path / "site"
    done = gpu_check("--install-only", offline=True, GPU_CHECK_VARIANT="cpu", PARTS_DIR=str(wheelhouse), SITE=str(site))
    assert done.returncode == 0, done.stderr
    for package in ("fastapi", "starlette", "pydantic_core", "annotated_types", "python_multipart", "onnxruntime"):
        assert (site / package).is_dir(), package

    partial = tmp_path / "partial"
    partial.mkdir()
    for wheel in wheelhouse.glob("*.whl"):
        if not wheel.name.startswith("annotated_types"):
            (partial / wheel.name).symlink_to(wheel)
    done = gpu_check("--install-only", offline=True, GPU_CHECK_VARIANT="cpu", PARTS_DIR=str(partial),
                     SITE=str(tmp_path / "site2"))
    assert done.returncode == 3
    assert "annotated-types" in done.stderr and "does not install from" in done.stderr, done.stderr
