"""The whole GPU lease, rehearsed on the CPU (a SIMULATION: no GPU figure comes out of it).

As a session with a device would: bench/gpu_stage.py stages the real onnxruntime-gpu wheel for CPython 3.12 and
the service's wheels the device lacks, and plans the calls; then every call is replayed here in order, each with
only its own carried folder, against a Python 3.12 environment that holds what the device has (CPU builds: the
CPU onnxruntime 1.30, onnx, numpy; installed with pip --no-index from a folder, no network). The last call runs
bench/gpu_check.sh end to end with the CPU provider standing in for CUDA: join, install --no-deps into a target
folder, import check, provider check, the shipped pair, an exported pair, the service under load, memory.

Asserted: the call count and every call's size against the 64 MiB limit with the measured tree, the expected
device time within 12 minutes, and every step ok within its budget. Differences from the device, on purpose:
torch 2.11+cu130 is not installed in the 3.12 environment (its CUDA build alone is 527 MB); the exports run in
this test's own interpreter (EXPORT_PYTHON, the project's torch), ResNet-20 stands in for ResNet-50 and
EfficientNet-Lite0, batches 1 and 8, concurrency 8 and 16, and every step budget is doubled (2 shared cores
here against the device's 16).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from deploy_support import ROOT

SCRIPT = ROOT / "bench" / "gpu_check.sh"
MIB = 1 << 20
# What the device has that the measuring side needs (bench/gpu_device_packages.txt), as CPU builds.
DEVICE_STAND_INS = ("onnxruntime==1.30.0", "onnx", "numpy", "ml-dtypes", "typing-extensions", "protobuf",
                    "flatbuffers", "packaging")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")

pytestmark = pytest.mark.timeout(600)


def python312() -> str:
    """The device's Python minor version, found as a fresh CI machine would find it."""
    candidates = [shutil.which("python3.12"), *sorted(map(str, Path.home().glob(".pyenv/versions/3.12*/bin/python3.12")))]
    for candidate in filter(None, candidates):
        if subprocess.run([candidate, "-c", "import venv, ensurepip"], capture_output=True).returncode == 0:
            return candidate
    pytest.fail("no Python 3.12 with venv here: the GPU lease's dry run needs the device's Python. Install one "
                "(pyenv install 3.12, or a python3.12 package where the distribution has one: Debian bookworm "
                "has none) and run again")


def run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(command)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def lease(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("lease")
    # The device's environment: Python 3.12 and CPU builds of what it has, installed offline.
    wheels = tmp / "device-wheels"
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", "3.12", *platforms, "-d", str(wheels), *DEVICE_STAND_INS], 300)
    device = tmp / "device-python"
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    run([python312(), "-m", "venv", str(device)], 120)
    run([str(device / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--find-links", str(wheels),
         "--no-compile", *DEVICE_STAND_INS], 300, env=offline)

    # Here: stage. A fast compression level (the wheel is mostly incompressible: 211 MiB at -3, 208.5 at -19).
    stage = tmp / "stage"
    staged = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_stage.py"), "--out", str(stage), "--level", "3"],
                            capture_output=True, text=True, timeout=600, check=False)
    assert staged.returncode in (0, 1), staged.stderr[-3000:]
    manifest = json.loads((stage / "call-1" / "manifest.json").read_text())

    # The device: every call in order, each carrying only its own folder; one warm machine (STAGE_DIR, SITE).
    env = offline | {
        "PYTHON": str(device / "bin" / "python"), "EXPORT_PYTHON": sys.executable,
        "STAGE_DIR": str(tmp / "warm" / "stage"), "SITE": str(tmp / "warm" / "site"), "OUT": str(tmp / "out"),
        "GPU_CHECK_PROVIDER": "cpu", "GPU_CHECK_SIMULATION": "1", "GPU_CHECK_ARCHS": "resnet20",
        "GPU_CHECK_BATCHES": "1,8", "GPU_CHECK_SECONDS": "0.2", "GPU_CHECK_CONCURRENCY": "8,16",
        "GPU_CHECK_SERVICE_S": "3", "GPU_CHECK_CLIENTS": "1", "GPU_CHECK_STEP_SCALE": "2",
    }
    calls = []
    for call in manifest["calls"]:
        carried = tmp / f"carried-{call['number']}"
        shutil.copytree(stage / f"call-{call['number']}", carried / f"call-{call['number']}")
        args = call["command"].split()[2:]  # "bash bench/gpu_check.sh [--stage]"
        done = subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env | {"STAGE_SRC": str(carried)},
                              capture_output=True, text=True, timeout=call["timeout_s"], check=False)
        calls.append({"call": call, "rc": done.returncode, "output": done.stdout + done.stderr,
                      "bytes": sum(p.stat().st_size for p in carried.rglob("*") if p.is_file())})
    out = tmp / "out"
    steps = [dict(zip(("step", "status", "seconds", "budget_s"), line.split("\t"), strict=True))
             for line in (out / "steps.tsv").read_text().splitlines()[1:]]
    return {"staged": staged, "manifest": manifest, "calls": calls, "steps": steps, "out": out}


def test_the_plan_fits_the_lease(lease):
    manifest = lease["manifest"]
    assert lease["staged"].returncode == 0, lease["staged"].stdout  # exit 1: over the device-time budget
    tree = sum(manifest["tree_bytes"].values())
    assert tree < 40 * MIB
    assert manifest["wheel"]["name"].startswith("onnxruntime_gpu-") and "-cp312-" in manifest["wheel"]["name"]
    stream = manifest["stream"]["bytes"]
    room = manifest["limit_bytes"] - tree - manifest["margin_bytes"]
    small = sum(w["bytes"] for w in manifest["wheels"])
    assert len(manifest["calls"]) == math.ceil((stream + small) / (room - 16_384))  # the manifest's room: 16 KiB
    assert sum(manifest["expected_device_s"]) <= 12 * 60
    print(f"\n{len(manifest['calls'])} calls, expected device time {sum(manifest['expected_device_s']):.0f} s, "
          f"tree {tree / MIB:.1f} MiB, stream {stream / MIB:.1f} MiB, small wheels {small / MIB:.1f} MiB")


def test_every_call_is_under_the_limit_and_succeeds(lease):
    manifest = lease["manifest"]
    tree = sum(manifest["tree_bytes"].values())
    assert len(lease["calls"]) == len(manifest["calls"]) >= 2
    for c in lease["calls"]:
        assert tree + c["bytes"] <= 64 * MIB, (c["call"]["number"], c["bytes"])
        assert c["rc"] == 0, c["output"][-4000:]
    staged = [c["output"] for c in lease["calls"][:-1]]
    assert all("[stage]" in o for o in staged)
    assert "still to carry: call " + str(len(manifest["calls"])) in staged[-1]
    assert "complete" in lease["calls"][-1]["output"]


def test_every_step_completes_within_its_budget(lease):
    steps = {s["step"]: s for s in lease["steps"]}
    assert list(steps) == ["stage", "join", "install", "provider", "shipped", "export-resnet20", "time-resnet20",
                           "service", "memory"]
    for s in steps.values():
        assert s["status"] == "ok", s
        assert float(s["seconds"]) <= float(s["budget_s"]), s
    summary = (lease["out"] / "summary.md").read_text()
    assert "SIMULATION" in summary and "Missing (a step not ok): none." in summary


def test_the_report_is_the_gpu_wheel_on_the_cpu_labelled_a_simulation(lease):
    log = (lease["out"] / "gpu_check.log").read_text()
    assert "import check ok: onnxruntime 1.31.1 from" in log and "CUDAExecutionProvider" in log
    report = (lease["out"] / "gpu_check.md").read_text()
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections and all("SIMULATION" in line for line in sections), sections
    assert "| RBN folded | 8 |" in report and "### The service on this machine" in report
    assert "| 16 |" in report and "| 0 |" in report  # the service row at concurrency 16, no errors
    assert "### Memory per model (CPU stand-in" in report
