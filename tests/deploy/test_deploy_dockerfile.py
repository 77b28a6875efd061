"""docker/Dockerfile: lints clean, and each target is what docs/deployment.md promises."""

from __future__ import annotations

import fnmatch
import re

import pytest
from deploy_support import (
    DOCKER,
    DOCKERFILE,
    ROOT,
    parse_dockerfile,
    resolve_image,
    run,
    tool,
)

TARGETS = ("gpu", "cpu")


def test_hadolint_passes_at_the_strictest_threshold():
    done = run([tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_target_is_the_gpu_image():
    _args, stages = parse_dockerfile()
    assert stages[-1].name == "gpu"
    assert {s.name for s in stages} >= set(TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_runtime_contract(target):
    img = resolve_image(target)
    assert img.cmd == ["rbn-serve", "serve"] and img.cmd_exec_form, "exec form: the server is PID 1 and gets SIGTERM"
    assert img.entrypoint is None
    assert img.stopsignal == "SIGTERM"
    assert img.env["RBN_SERVE_HOST"] == "0.0.0.0"
    assert img.expose == [img.env["RBN_SERVE_PORT"], img.env["RBN_SERVE_GRPC_PORT"]]  # HTTP, then gRPC (docs/grpc.md)
    assert img.env["RBN_SERVE_MODEL_REPOSITORY"] == "/models"
    assert img.env["PATH"].startswith("/opt/venv/bin:")
    assert img.env["RBN_SERVE_PROVIDERS"] == {"gpu": "cuda", "cpu": "cpu"}[target]
    # Non-root, by number (Kubernetes runAsNonRoot can only verify a numeric user).
    assert img.user and re.fullmatch(r"[1-9]\d*:[1-9]\d*", img.user), img.user
    # Models baked in at the path the server reads.
    assert any(c["sources"] == ["models/"] and c["dest"].rstrip("/") == img.env["RBN_SERVE_MODEL_REPOSITORY"]
               for c in img.copies)
    # The health check probes readiness with a script the image contains.
    hc = img.healthcheck
    assert hc and hc["exec_form"] and hc["cmd"][0] == "python"
    script = hc["cmd"][1]
    assert any(c["from"] is None and c["dest"].rstrip("/") + "/" + "healthcheck.py" == script
               and "docker/healthcheck.py" in c["sources"] for c in img.copies)
    assert "/readyz" in (DOCKER / "healthcheck.py").read_text()
    assert int(hc["options"]["start-period"].rstrip("s")) >= 30, "warm-up happens before readiness"


@pytest.mark.parametrize("target", TARGETS)
def test_final_stage_has_no_build_tools_and_no_torch(target):
    img = resolve_image(target)
    final_runs = " ".join(img.runs)
    for word in ("apt-get", "apk", "gcc", "build-essential", "torch"):
        assert word not in final_runs
    venv = next(c for c in img.copies if c["dest"] == "/opt/venv")
    assert venv["from"] == f"venv-{target}"


def test_gpu_image_registers_and_checks_the_cuda_libraries():
    img = resolve_image("gpu")
    assert any("check_gpu_libs.py --register" in r for r in img.runs)
    assert img.env["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"  # utility: NVML for the GPU metrics
    assert "RBN_SERVE_PROVIDERS" in img.env and "check_gpu_libs" not in " ".join(resolve_image("cpu").runs)


def test_gpu_image_requires_a_driver_for_its_cuda_major():
    """NVIDIA_REQUIRE_CUDA names the CUDA major of the CUDA runtime wheel the image installs (constraints.txt),
    so the container toolkit refuses an older driver with a clear message; the docs quote the same major."""
    pins = dict(line.split("==") for line in (DOCKER / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    major = pins["nvidia-cuda-runtime"].split(".")[0]
    assert resolve_image("gpu").env["NVIDIA_REQUIRE_CUDA"].strip('"') == f"cuda>={major}.0"
    assert "NVIDIA_REQUIRE_CUDA" not in resolve_image("cpu").env
    assert f"cuda>={major}.0" in (ROOT / "docs" / "deployment.md").read_text()


def test_base_images_are_pinned():
    _args, stages = parse_dockerfile()
    for stage in stages:
        base = stage.base
        if base in {s.name for s in stages}:
            continue
        assert re.fullmatch(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?", base), f"unpinned base {base}"


# --- .dockerignore: an allow-list that still lets every COPY source through ----------------------------
def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; `!` re-includes; a pattern matches a path or its parents."""
    excluded = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatchcase(p, pattern[3:]) for p in parts)
        else:
            hit = any(fnmatch.fnmatchcase(p, pattern) for p in prefixes)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore_lets_every_copy_source_through_and_nothing_heavy():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    _args, stages = parse_dockerfile()
    sources = []
    for stage in stages:
        for word, rest in stage.instructions:
            if word == "COPY" and "--from=" not in rest:
                tokens = [t for t in rest.split() if not t.startswith("--")]
                sources += tokens[:-1]
    assert sources
    for source in sources:
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*") if p.is_file() and "__pycache__" not in p.parts]
        if source.rstrip("/") != "models":  # models/ may be empty until trained bundles land
            assert files, f"COPY source {source} is missing from the repository"
        for f in files:
            assert not dockerignore_excludes(f, patterns), f"{f} is needed by COPY {source} but .dockerignore drops it"
    # samples/ goes in (460 kB): the wheel ships the images the page at / offers
    for heavy in (".venv/bin/python", "runs/x", ".git/HEAD", "checkpoints/x.pt", "results/x.json", "tests/x.py",
                  "service/__pycache__/app.cpython-311.pyc", "bench/x.py"):
        assert dockerignore_excludes(heavy, patterns), heavy
