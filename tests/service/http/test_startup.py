"""Start-up: fail fast and clearly when nothing can be served; settings from env and flags."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import httpx
import pytest
from pydantic import ValidationError
from skip_policy import allowed_skip
from tests.service.svc_support import BN, BROKEN, RBN, ROOT, start_server, write_batch_one_bundle

from service.cli import build_cli
from service.core.config import Settings


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RBN_SERVE_")}
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def serve(repo, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("serve", "--model-repository", str(repo), "--port", "0", *extra)


def test_no_valid_bundle_fails_the_start(served_repo, tmp_path):
    shutil.copytree(served_repo / BROKEN, tmp_path / BROKEN)
    result = serve(tmp_path)
    assert result.returncode != 0
    assert "no servable bundle" in result.stderr and "config.pbtxt" in result.stderr


def test_cuda_requested_without_cuda_fails_loudly(bundle_repo):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        allowed_skip("cuda-present", "this machine has CUDA")
    result = serve(bundle_repo, "--providers", "cuda")
    assert result.returncode != 0
    assert "providers=cuda" in result.stderr


def test_missing_primary_model_fails(bundle_repo):
    result = serve(bundle_repo, "--primary-model", "absent")
    assert result.returncode != 0 and "primary model 'absent'" in result.stderr


def test_invalid_settings_exit_2_with_the_field(bundle_repo, tmp_path):
    result = serve(bundle_repo, "--shadow-fraction", "2")
    assert result.returncode == 2 and "shadow_fraction" in result.stderr
    result = serve(tmp_path / "nope")
    assert result.returncode == 2 and "model_repository" in result.stderr and "not a directory" in result.stderr


def test_env_prefix_and_flags_override(bundle_repo, monkeypatch):
    monkeypatch.setenv("RBN_SERVE_MODEL_REPOSITORY", str(bundle_repo))
    monkeypatch.setenv("RBN_SERVE_MAX_BATCH_SIZE", "8")
    monkeypatch.setenv("RBN_SERVE_PRIMARY_MODEL", BN)
    monkeypatch.setenv("RBN_SERVE_PROVIDERS", "cpu")
    _, settings = build_cli().parse(["serve", "--max-batch-size", "4", "--access-log"])
    assert settings.model_repository == bundle_repo
    assert settings.primary_model == BN and settings.providers == "cpu"
    assert settings.max_batch_size == 4 and settings.access_log is True  # flags win over the environment


def test_settings_fail_fast(bundle_repo):
    with pytest.raises(ValidationError, match="max_queue_size"):
        Settings(model_repository=bundle_repo, max_batch_size=64, max_queue_size=8)
    with pytest.raises(ValidationError, match="max_files"):  # a request of max_files images could never be queued
        Settings(model_repository=bundle_repo, max_batch_size=8, max_queue_size=8, max_files=9)
    with pytest.raises(ValidationError):
        Settings(model_repository=bundle_repo, providers="tpu")
    with pytest.raises(ValidationError):
        Settings(model_repository=bundle_repo, unknown_knob=1)
    assert all(field.description for field in Settings.model_fields.values()), "every setting is documented"


def test_validate_command(bundle_repo, served_repo):
    good = run_cli("validate", str(bundle_repo / RBN), str(bundle_repo / BN))
    assert good.returncode == 0, good.stdout + good.stderr
    lines = good.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("OK") for line in lines)
    assert f"{RBN} v1: rbn, baseline {BN}" in lines[0]
    bad = run_cli("validate", str(bundle_repo / RBN), str(served_repo / BROKEN), str(served_repo / "missing"))
    assert bad.returncode == 1
    lines = bad.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "FAIL", "FAIL"]
    assert "config.pbtxt" in lines[1] and "not a directory" in lines[2]


def test_graph_that_onnx_runtime_cannot_load_is_skipped_and_fatal_when_alone(bundle_repo, tmp_path):
    import json

    from rbn.contract.bundle import write_bundle

    fields = json.loads((bundle_repo / BN / "model.json").read_text())
    fields.pop("onnx_sha256")
    write_bundle(tmp_path, fields, b"not an onnx graph")  # a correct hash of a useless file
    result = serve(tmp_path)
    assert result.returncode == 1
    assert "loading models failed" in result.stderr and "cannot load the graph" in result.stderr


def test_bundle_failing_at_warm_up_is_skipped_and_the_others_served(bundle_repo, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(bundle_repo / BN, repo / BN)
    bad = write_batch_one_bundle(repo, bundle_repo / BN).name  # valid and consistent; fails at batch 2
    proc = start_server(repo, tmp_path, max_batch_size=4)
    try:
        with httpx.Client(base_url=proc.url, timeout=60) as c:
            models = c.get("/models").json()
            assert [m["name"] for m in models["models"]] == [BN] and models["primary"] == BN
            assert "warm-up with a batch of 2 failed" in models["unavailable"][bad]
            r = c.post(f"/v2/models/{BN}/infer", json={"inputs": [
                {"name": "input", "shape": [2, 1, 28, 28], "datatype": "FP32", "data": [0.0] * 1568}]})
            assert r.status_code == 200, r.text
            assert c.get(f"/v2/models/{bad}/ready").status_code == 404
            assert "rbn_serve_bundle_errors 1.0" in c.get("/metrics").text
    finally:
        proc.stop()
    validate = run_cli("validate", str(repo / BN), str(repo / bad))
    assert validate.returncode == 1 and "Traceback" not in validate.stderr
    lines = validate.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["OK", "FAIL"] and "batch of 2 failed" in lines[1]


def test_cuda_listed_but_unusable_fails_before_listening(bundle_repo, monkeypatch, caplog):
    """onnxruntime-gpu lists CUDAExecutionProvider with no GPU or driver; the session then runs on the CPU.
    The listing is what is stood in for here (this machine's onnxruntime has no CUDA build); the session
    is real. The start must fail in ``serve`` before uvicorn binds the port, with the one-line reason."""
    import socket

    import onnxruntime

    from service.http import server

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        allowed_skip("cuda-present", "this machine's onnxruntime has CUDA; the GPU check covers it")
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listened = []
    monkeypatch.setattr(server.DrainingServer, "run", lambda self, *a, **k: listened.append(True))
    settings = Settings(model_repository=bundle_repo, providers="cuda", port=port)
    with caplog.at_level("CRITICAL", logger="service.http.server"):
        assert server.serve(settings) == 1
    assert not listened, "uvicorn was started although providers=cuda cannot be met"
    assert any("cannot start:" in r.getMessage() and "providers=cuda but the session runs on ['CPUExecutionProvider']"
               in r.getMessage() for r in caplog.records), [r.getMessage() for r in caplog.records]
