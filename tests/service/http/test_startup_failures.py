"""Every cause that keeps the server from starting ends it the same way, alone or with ``--workers 2``:
one ``cannot start: <why>`` line, exit 1, no traceback, no abort (a real server process each time)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from harness.procs import free_port

ROOT = Path(__file__).resolve().parents[3]
NOBODY = 65534


def start(tmp: Path, workers: int, *extra: str, repo: Path = ROOT / "models", port: int | None = None,
          prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    args = [*prefix, sys.executable, "-m", "service", "serve", "--model-repository", str(repo), "--providers", "cpu",
            "--workers", str(workers)]
    if "--host" not in extra:
        args += ["--host", "127.0.0.1"]
    args += ["--port", str(free_port() if port is None else port), *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")} | {
        "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def assert_one_line(done: subprocess.CompletedProcess, *fragments: str) -> None:
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if "cannot start:" in line]
    assert done.returncode == 1, output
    assert len(lines) == 1, output
    assert all(f in lines[0] for f in fragments), output
    assert "Traceback" not in output and "terminate called" not in output, output
    assert "Application startup complete" not in output, output  # it never started serving


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "workers"])


@WORKERS
def test_port_taken(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = start(tmp_path, workers, port=port)
    assert_one_line(done, f"cannot listen on 127.0.0.1:{port}", "in use")


@WORKERS
def test_address_not_available(tmp_path, workers):
    done = start(tmp_path, workers, "--host", "192.0.2.1")  # TEST-NET-1: on no interface of this host
    assert_one_line(done, "cannot listen on 192.0.2.1:", "assign requested address")


@WORKERS
def test_unknown_host_name(tmp_path, workers):
    done = start(tmp_path, workers, "--host", "no-such-host.invalid")
    assert_one_line(done, "cannot listen on no-such-host.invalid:")


@WORKERS
def test_unreadable_key_file(workers):
    """A secret of mode 0600 owned by someone else (the container case: the host user's file, uid 10001's
    server). As root the file belongs to nobody and the server runs without the capabilities that let root
    read any file (util-linux's setpriv); otherwise the file is made mode 0000."""
    folder = Path(tempfile.mkdtemp(prefix="rbn-key-"))
    try:
        folder.chmod(0o755)  # the server may enter the folder, not read the file
        key = folder / "api-key"
        key.write_text("0123456789abcdef\n")
        prefix: tuple[str, ...] = ()
        if os.geteuid() == 0:
            os.chown(key, NOBODY, NOBODY)
            key.chmod(0o600)
            prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
        else:
            key.chmod(0o000)
        done = start(folder, workers, "--api-key-file", str(key), prefix=prefix)
    finally:
        key.chmod(0o600)
        key.unlink()
        folder.rmdir()
    assert_one_line(done, f"api_key_file '{key}' cannot be read", "Permission denied")


@WORKERS
def test_unusable_key_file(tmp_path, workers):
    key = tmp_path / "api-key"
    key.write_text("short\n")
    done = start(tmp_path, workers, "--api-key-file", str(key))
    assert_one_line(done, "api_key_file: a key of 5 characters")


@WORKERS
def test_bad_bundle(tmp_path, workers):
    (tmp_path / "models" / "broken").mkdir(parents=True)
    (tmp_path / "models" / "broken" / "model.json").write_text("{not json")
    done = start(tmp_path, workers, repo=tmp_path / "models")
    assert_one_line(done, "no servable bundle in", "broken")


@WORKERS
def test_a_graph_onnx_runtime_cannot_load(tmp_path, workers):
    """Valid model.json and hash, a graph ONNX Runtime refuses: found while loading, after the port opened."""
    import json

    from rbn.contract.bundle import write_bundle

    fields = json.loads((ROOT / "models" / "fmnist-resnet20-bn" / "model.json").read_text())
    fields.pop("onnx_sha256")
    write_bundle(tmp_path / "models", fields, b"not an onnx graph")
    done = start(tmp_path, workers, repo=tmp_path / "models")
    output = done.stdout + done.stderr
    lines = [line for line in output.splitlines() if "cannot start:" in line]
    assert done.returncode == 1 and len(lines) == 1, output
    assert "loading models failed" in lines[0] and "cannot load the graph" in lines[0], output
    assert "Traceback" not in output and "terminate called" not in output, output
