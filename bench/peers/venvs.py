"""One virtual environment per peer under ``.peers/`` (git-ignored), created and installed when missing.

A venv is reinstalled when its requirement files change: their hash is stamped into the venv. The GPU
variant (``.peers/<peer>-gpu``) swaps ONNX Runtime for ``onnxruntime-gpu`` of the same version, as the
project's ``[gpu]`` extra does (the two packages install the same module and must not be mixed).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = HERE / "requirements-common.txt"
ORT_VERSION = "1.31.1"  # requirements-common.txt's onnxruntime pin, for the GPU swap
STAMP = ".rbn-peers-requirements"


def default_python() -> str:
    """The interpreter the venvs are made from: the system's python3 when there is one, else the one running
    the harness. Triton's Python backend stub (PyTriton) embeds the system's libpython3.X; a venv made from
    another build of the same minor version (pyenv's 3.11.7 over Debian's 3.11.2) hands it a newer standard
    library, and the model fails to load: ``'_thread.RLock' object has no attribute '_recursion_count'``."""
    system = Path("/usr/bin/python3")
    return str(system) if system.exists() else getattr(sys, "_base_executable", sys.executable)


def requirement_files(peer: str) -> list[Path]:
    return [COMMON, HERE / f"requirements-{peer}.txt"]


def _digest(files: list[Path], python: str, gpu: bool) -> str:
    h = hashlib.sha256(f"{python}\n{gpu}\n".encode())
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def ensure(peer: str, root: Path, python: str | None = None, gpu: bool = False, log=print) -> Path:
    """The venv's interpreter, after creating and installing the venv if it is missing or stale."""
    python = python or default_python()
    venv = root / (f"{peer}-gpu" if gpu else peer)
    files = requirement_files(peer)
    digest = _digest(files, python, gpu)
    interpreter = venv / "bin" / "python"
    stamp = venv / STAMP
    if interpreter.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return interpreter
    log(f"installing {venv} from {', '.join(f.name for f in files)} (pip)")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    pip = [str(interpreter), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, *(a for f in files for a in ("-r", str(f)))], check=True)
    if gpu:
        subprocess.run([str(interpreter), "-m", "pip", "uninstall", "-q", "-y", "onnxruntime"], check=True)
        subprocess.run([*pip, f"onnxruntime-gpu=={ORT_VERSION}"], check=True)
    stamp.write_text(digest + "\n")
    return interpreter
