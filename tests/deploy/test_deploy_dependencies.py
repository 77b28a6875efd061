"""The image's dependencies come from pyproject.toml and nowhere else, and they are complete.

pyproject.toml [project] dependencies (+ the `gpu` extra) is the one list; docker/image_requirements.py
turns it into each image's requirements; docker/constraints.txt pins the versions (a lock, not a list).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
import tomllib

import pytest
from deploy_support import DOCKER, ROOT, resolve_image
from skip_policy import allowed_skip
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

spec = importlib.util.spec_from_file_location("image_requirements", DOCKER / "image_requirements.py")
image_requirements = importlib.util.module_from_spec(spec)
spec.loader.exec_module(image_requirements)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
BASE = PYPROJECT["project"]["dependencies"]
GPU_EXTRA = PYPROJECT["project"]["optional-dependencies"]["gpu"]
CONSTRAINTS = DOCKER / "constraints.txt"
NETWORK_ERRORS = ("NewConnectionError", "Max retries exceeded", "Temporary failure in name resolution",
                  "Network is unreachable", "Could not fetch URL", "ConnectTimeout", "ReadTimeout")


def names(requirements: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(Requirement(r).name): Requirement(r) for r in requirements}


def lock() -> dict[str, Version]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = Version(version)
    return pins


def test_cpu_image_installs_exactly_the_project_dependencies():
    assert image_requirements.requirements(PYPROJECT, "cpu") == BASE


def test_gpu_image_swaps_onnxruntime_for_the_gpu_extra():
    gpu = names(image_requirements.requirements(PYPROJECT, "gpu"))
    base, extra = names(BASE), names(GPU_EXTRA)
    assert "onnxruntime" in base and "onnxruntime-gpu" in extra
    assert "onnxruntime" not in gpu, "both wheels install the same `onnxruntime` package: one environment, one wheel"
    assert set(gpu) == (set(base) - {"onnxruntime"}) | set(extra)
    assert gpu["onnxruntime-gpu"].extras == {"cuda", "cudnn"}, "the CUDA 13 and cuDNN 9 wheels come with these extras"
    for name, requirement in gpu.items():
        source = extra.get(name) or base[name]
        assert requirement.specifier == source.specifier, name
    # One ONNX Runtime release for both images.
    assert base["onnxruntime"].specifier == extra["onnxruntime-gpu"].specifier


def test_no_torch_in_either_image():
    for variant in ("cpu", "gpu"):
        assert not {"torch", "torchvision"} & set(names(image_requirements.requirements(PYPROJECT, variant)))
    assert not {"torch", "torchvision"} & set(closure(BASE + GPU_EXTRA)), "torch would come in transitively"


def test_dockerfile_installs_only_through_image_requirements():
    text = (DOCKER / "Dockerfile").read_text()
    for variant in ("cpu", "gpu"):
        assert f"image_requirements.py {variant}" in text
    installs = re.findall(r"pip install ([^&\n]+)", text)
    assert installs, "no pip install in the Dockerfile?"
    for args in installs:
        tokens = args.split()
        if "--requirement" in tokens:  # the generated list, pinned by the lock, wheels only (no compilers)
            assert tokens[tokens.index("--requirement") + 1] == "requirements.txt"
            assert "--only-binary=:all:" in tokens
            assert "--constraint" in tokens and tokens[tokens.index("--constraint") + 1] == "constraints.txt"
        else:  # the project's own wheel, whose dependencies are already there
            assert "--no-deps" in tokens and all(t.startswith("-") or t.endswith(".whl") for t in tokens), args


def test_lock_pins_every_listed_requirement_within_pyproject_ranges():
    pins = lock()
    for variant in ("cpu", "gpu"):
        for name, requirement in names(image_requirements.requirements(PYPROJECT, variant)).items():
            assert name in pins, f"{name} is not pinned in docker/constraints.txt; regenerate it (see its header)"
            assert requirement.specifier.contains(pins[name], prereleases=True), (
                f"docker/constraints.txt pins {name}=={pins[name]} outside pyproject's {requirement.specifier}; "
                "regenerate it: python docker/image_requirements.py lock > docker/constraints.txt")


def test_lock_was_resolved_for_the_image_python():
    header = re.search(r"resolved-for: python (\d+\.\d+) linux x86_64", CONSTRAINTS.read_text())
    assert header, "docker/constraints.txt lacks its resolved-for line"
    base = resolve_image("gpu").base
    tag = re.search(r"python:(\d+\.\d+)\.\d+-slim", base)
    assert tag, f"base image {base} is not a pinned python:X.Y.Z-slim tag"
    assert tag.group(1) == header.group(1), "lock and image use different Python versions"
    assert resolve_image("cpu").base == base


@pytest.mark.timeout(900)  # two pip dry runs of up to 300 s each
def test_lock_is_complete_and_resolves(tmp_path):
    """pip resolves each image's list under the lock, and installs nothing the lock does not pin
    (what `docker build` does, without downloading the wheels)."""
    pins = lock()
    for variant in ("cpu", "gpu"):
        req, report = tmp_path / f"{variant}.txt", tmp_path / f"{variant}.json"
        req.write_text("\n".join(image_requirements.requirements(PYPROJECT, variant)) + "\n")
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                               "--only-binary=:all:", "--report", str(report), "-r", str(req), "-c", str(CONSTRAINTS)],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0 and any(e in done.stderr for e in NETWORK_ERRORS):
            allowed_skip("index-unreachable", done.stderr.strip().splitlines()[-1])
        assert done.returncode == 0, done.stderr[-3000:]
        installed = {canonicalize_name(i["metadata"]["name"]): Version(i["metadata"]["version"])
                     for i in json.loads(report.read_text())["install"]}
        unpinned = sorted(set(installed) - set(pins))
        assert not unpinned, f"{variant} image installs unpinned {unpinned}; regenerate docker/constraints.txt"
        assert all(installed[n] == pins[n] for n in installed)


# --- everything the server imports is installed in the image ------------------------------------------
def closure(requirements: list[str]) -> set[str]:
    """Distribution names the requirements pull in (from the installed metadata; uninstalled ones as leaves)."""
    env = default_environment() | {"extra": ""}
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        seen.add(name)
        try:
            dist_requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        extras = req.extras
        for line in dist_requires:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate(env | {"extra": e}) for e in ({""} | set(extras))):
                todo.append(Requirement(str(dep.name) + (f"[{','.join(dep.extras)}]" if dep.extras else "")))
    return seen


def imported_modules(path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def server_imports() -> set[str]:
    """Every module imported anywhere in service/ and in the rbn modules it reaches."""
    modules: set[str] = set()
    files = list((ROOT / "service").rglob("*.py"))
    done = set()
    while files:
        path = files.pop()
        if path in done:
            continue
        done.add(path)
        for module in imported_modules(path):
            modules.add(module)
            if module == "rbn" or module.startswith("rbn."):
                parts = module.split(".")
                candidates = [ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py"),
                              ROOT / "rbn" / "__init__.py"]
                files += [c for c in candidates if c.exists()]
    return {m.split(".")[0] for m in modules}


# Modules of distributions that only the GPU image installs (not installed on a CPU test machine).
GPU_ONLY_MODULES = {"pynvml": "nvidia-ml-py"}


def test_every_module_the_server_imports_is_in_the_image():
    allowed = closure(BASE) | closure(GPU_EXTRA)
    owners = md.packages_distributions()
    missing = {}
    for module in sorted(server_imports()):
        if module in sys.stdlib_module_names or module in ("service", "rbn", "__future__"):
            continue
        dists = {canonicalize_name(d) for d in owners.get(module, [])} or {GPU_ONLY_MODULES.get(module, module)}
        if not dists & allowed:
            missing[module] = sorted(dists)
    assert not missing, (f"the server imports {missing}, which pyproject.toml's dependencies do not bring into "
                         "the image: add them to [project] dependencies")
    assert "torch" not in server_imports()
