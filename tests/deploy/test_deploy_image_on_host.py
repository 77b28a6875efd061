"""The container's command line, environment and paths work when run on the host exactly as the image runs them.

Everything is read from docker/Dockerfile (CPU target): CMD, ENV (with ${PATH} expanded over the base
image's), WORKDIR, USER, HEALTHCHECK, STOPSIGNAL, and the COPY destinations. Each image path gets a host
stand-in - /opt/venv -> this virtual environment, /models -> a copy of what the image bakes in, /app ->
a folder with the files COPY puts there - and the server starts with that environment only (no
PYTHONPATH, HOME as in the image, cwd = WORKDIR). The image's non-root USER is not emulated (the host's
Python may live where that uid cannot read, e.g. pyenv under /root); instead the test checks that the
server writes nothing into the model repository, which the image's user could not. Two values are
changed on purpose, through the same RBN_SERVE_* variables: the host (the image binds 0.0.0.0; here
loopback) and the port (a free one instead of 8000).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from deploy_support import ROOT, Server, free_port, http, resolve_image, sample_images

from service.core.config import Settings


def host_paths(image, root: Path, repository: Path) -> dict[str, Path]:
    """Image path -> host stand-in, made from the image's COPY instructions."""
    mapping: dict[str, Path] = {}
    for copy in image.copies:
        dest = copy["dest"].rstrip("/")
        if copy["from"] and dest == "/opt/venv":
            mapping[dest] = Path(sys.prefix)
        elif copy["from"] is None and copy["sources"] == ["models/"]:
            shutil.copytree(repository, root / "models")
            mapping[dest] = root / "models"
        elif copy["from"] is None:
            target = root / dest.strip("/").replace("/", "_")
            target.mkdir(exist_ok=True)
            for source in copy["sources"]:
                shutil.copy2(ROOT / source, target / Path(source).name)
            mapping[dest] = target
    assert {"/opt/venv", "/models"} <= set(mapping), f"unexpected COPY layout: {image.copies}"
    workdir = image.workdir.rstrip("/")
    mapping.setdefault(workdir, root / "workdir")
    mapping[workdir].mkdir(exist_ok=True)
    return mapping


def to_host(value: str, mapping: dict[str, Path]) -> str:
    """Rewrite image paths (also inside PATH-like lists) to their host stand-ins."""
    out = []
    for item in value.split(":"):
        for prefix, host in sorted(mapping.items(), key=lambda kv: -len(kv[0])):
            if item == prefix or item.startswith(prefix + "/"):
                item = str(host) + item[len(prefix):]
                break
        out.append(item)
    return ":".join(out)


def test_image_command_environment_and_paths_work_on_the_host(source_repository):
    image = resolve_image("cpu")
    assert image.env["RBN_SERVE_HOST"] == "0.0.0.0"
    assert image.expose == [image.env["RBN_SERVE_PORT"], image.env["RBN_SERVE_GRPC_PORT"]]  # HTTP, then gRPC
    root = Path(tempfile.mkdtemp(prefix="rbn-image-"))
    try:
        mapping = host_paths(image, root, source_repository)
        models_before = sorted((root / "models").rglob("*"))

        port = free_port()
        env = {key: to_host(value, mapping) for key, value in image.env.items()}
        env.update(RBN_SERVE_HOST="127.0.0.1", RBN_SERVE_PORT=str(port), RBN_SERVE_GRPC_PORT=str(free_port()),
                   HOME="/nonexistent")
        assert env["RBN_SERVE_MODEL_REPOSITORY"] == str(root / "models")
        cwd = mapping[image.workdir.rstrip("/")]
        executable = shutil.which(image.cmd[0], path=env["PATH"])
        assert executable and executable.startswith(sys.prefix), f"{image.cmd[0]} is not in the venv: pip install -e ."

        server = Server(image.cmd, env, port, root / "server.log", cwd=cwd)
        try:
            server.wait_ready()
            healthcheck = [to_host(arg, mapping) for arg in image.healthcheck["cmd"]]
            done = subprocess.run(healthcheck, env=env, cwd=cwd, capture_output=True, text=True, timeout=30,
                                  check=False)
            assert done.returncode == 0, f"HEALTHCHECK fails on a ready server: {done.stderr}"

            _name, png, _label = sample_images(1)[0]
            status, body = http("POST", server.url + "/predict", png, {"Content-Type": "image/png"})
            assert status == 200, body
            status, body = http("GET", server.url + "/metrics")
            assert status == 200 and b'provider="cpu"' in body
        finally:
            assert image.stopsignal == "SIGTERM"
            drain = float(env.get("RBN_SERVE_DRAIN_DELAY_S", Settings.model_fields["drain_delay_s"].default))
            graceful = float(env.get("RBN_SERVE_GRACEFUL_TIMEOUT_S", Settings.model_fields["graceful_timeout_s"].default))
            code = server.stop(timeout=drain + graceful + 10)
        assert code == 0, f"exit {code} after {signal.Signals.SIGTERM.name}:\n{server.log()}"
        done = subprocess.run(healthcheck, env=env, cwd=cwd, capture_output=True, text=True, timeout=30,
                                  check=False)
        assert done.returncode == 1, "HEALTHCHECK passes with no server"
        assert sorted((root / "models").rglob("*")) == models_before, "the server wrote into the model repository"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_healthcheck_fails_fast_when_nothing_listens():
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "RBN_SERVE_PORT": str(free_port())}
    done = subprocess.run([sys.executable, str(ROOT / "docker/healthcheck.py")], env=env, capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 1 and "Connection refused" in done.stderr
