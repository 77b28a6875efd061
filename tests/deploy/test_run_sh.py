"""run.sh installs once: again only when pyproject.toml changed, with the editable-install note filtered out.

run.sh runs on a copy (it works in its own folder) with a stand-in virtual environment whose python records
how it was called, so the test exercises run.sh's own logic without installing anything."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "python $* PYTHONWARNINGS=${PYTHONWARNINGS:-}" >> "$(dirname "$0")/../calls.log"
"""
FAKE_COMMAND = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >> "$(dirname "$0")/../calls.log"
"""


def checkout(tmp_path: Path) -> Path:
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy2(ROOT / "run.sh", work / "run.sh")
    shutil.copy2(ROOT / "pyproject.toml", work / "pyproject.toml")
    bin_dir = work / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in (("python", FAKE_PYTHON), ("rbn-serve", FAKE_COMMAND), ("rbn", FAKE_COMMAND)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return work


def run(work: Path, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RBN_VENV", "PYTHONWARNINGS")}
    done = subprocess.run(["./run.sh", *args], cwd=work, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    log = work / ".venv" / "calls.log"
    calls = log.read_text().splitlines()
    log.unlink()
    return calls


def test_serve_installs_once_and_again_only_when_pyproject_changes(tmp_path):
    work = checkout(tmp_path)
    first = run(work, "rbn-serve", "--version")
    assert first == ["python -m pip install -q -e . PYTHONWARNINGS=ignore:Editable installation",
                     "rbn-serve --version"]
    assert run(work, "rbn-serve", "--version") == ["rbn-serve --version"]  # installed already: no pip
    assert run(work, "serve", "--port", "9") == ["rbn-serve serve --port 9"]
    with open(work / "pyproject.toml", "a") as f:
        f.write("\n# a changed dependency\n")
    assert run(work, "rbn-serve", "--version")[0].startswith("python -m pip install -q -e . ")


def test_the_library_installs_its_extra_and_a_larger_install_serves_a_smaller_one(tmp_path):
    work = checkout(tmp_path)
    assert run(work, "rbn", "--help") == [
        "python -m pip install -q -e .[train] PYTHONWARNINGS=ignore:Editable installation", "rbn --help"]
    assert run(work, "rbn", "--help") == ["rbn --help"]
    assert run(work, "rbn-serve", "--version") == ["rbn-serve --version"]  # [train] includes the service
