"""Print the serving requirements of an image variant, read from pyproject.toml (the one source of truth).

    python image_requirements.py cpu [pyproject.toml]   # [project] dependencies, verbatim
    python image_requirements.py gpu [pyproject.toml]   # the same with onnxruntime swapped for the `gpu` extra
    python image_requirements.py gpu-host [pyproject.toml]  # gpu without the CUDA/cuDNN wheels (the host has them:
                                                            # bench/gpu_check.sh on a machine with torch's)
    python image_requirements.py lock [pyproject.toml]  # resolve both lists with pip -> docker/constraints.txt

`onnxruntime` and `onnxruntime-gpu` install the same `onnxruntime` package, so one environment must hold
exactly one of them: the GPU list drops the CPU wheel and takes `onnxruntime-gpu[cuda,cudnn]` (the extras
bring CUDA 13 and cuDNN 9 as wheels) plus the rest of the `gpu` extra (nvidia-ml-py for the GPU metrics).
The project itself is then installed with `pip install --no-deps`, so nothing pulls the CPU wheel back in.

`lock` prints the exact versions pip resolves for both variants (Linux x86-64, this Python), for
`docker/constraints.txt`: pyproject.toml says *what* the service needs, the constraints file pins *which*
release of everything (transitive CUDA wheels included) the image gets. Rerun it after changing a dependency;
tests/deploy checks that the two agree.

Standard library only: it runs in the image's build stage before anything is installed.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

CPU_RUNTIME = "onnxruntime"
# CUDA and cuDNN as wheels (the `gpu` extra pins the CUDA 13.0 ones): left out of gpu-host.
CUDA_WHEELS = {"nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-nvjitlink", "nvidia-cublas", "nvidia-cufft",
               "nvidia-curand", "nvidia-cudnn-cu13"}
GPU_RUNTIME = "onnxruntime-gpu"
GPU_RUNTIME_EXTRAS = ("cuda", "cudnn")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def split(requirement: str) -> tuple[str, str, str]:
    """(canonical name, extras incl. brackets, rest: version specifier and marker)."""
    match = _NAME.match(requirement)
    if match is None:
        raise ValueError(f"cannot parse requirement {requirement!r}")
    return canonical(match.group(1)), match.group(2) or "", match.group(3).strip()


VARIANTS = ("cpu", "gpu", "gpu-host")


def requirements(pyproject: dict, variant: str) -> list[str]:
    """The requirement lines an image of ``variant`` installs: cpu | gpu, or gpu-host (gpu without the
    CUDA and cuDNN wheels, for bench/gpu_check.sh on a machine whose CUDA libraries come from elsewhere)."""
    project = pyproject["project"]
    base = list(project["dependencies"])
    if variant == "cpu":
        return base
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    runtime_extras = GPU_RUNTIME_EXTRAS if variant == "gpu" else ()
    host_cuda = variant == "gpu-host"  # the machine's own CUDA libraries: none of the CUDA wheels
    if CPU_RUNTIME not in {split(r)[0] for r in base}:
        raise ValueError(f"[project] dependencies no longer name {CPU_RUNTIME!r}; update docker/image_requirements.py")
    gpu_extra = project.get("optional-dependencies", {}).get("gpu", [])
    out = [r for r in base if split(r)[0] != CPU_RUNTIME]
    found = False
    for requirement in gpu_extra:
        name, _extras, rest = split(requirement)
        if host_cuda and name in CUDA_WHEELS:
            continue
        if name == GPU_RUNTIME:
            found = True
            extras = f"[{','.join(runtime_extras)}]" if runtime_extras else ""
            requirement = f"{GPU_RUNTIME}{extras}{rest}"
        out.append(requirement)
    if not found:
        raise ValueError(f"the `gpu` extra in pyproject.toml does not name {GPU_RUNTIME!r}")
    return out


def resolve(lines: list[str]) -> dict[str, str]:
    """{name: version} that pip would install for ``lines`` (metadata only, nothing is installed)."""
    import json
    import os
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        req, report = os.path.join(tmp, "requirements.txt"), os.path.join(tmp, "report.json")
        Path(req).write_text("\n".join(lines) + "\n")
        subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                        "--report", report, "-r", req], check=True, stdout=subprocess.DEVNULL)
        installed = json.loads(Path(report).read_text())["install"]
    return {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in installed}


def lock(pyproject: dict) -> str:
    pins: dict[str, str] = {}
    for variant in ("cpu", "gpu"):
        for name, version in resolve(requirements(pyproject, variant)).items():
            if pins.setdefault(name, version) != version:
                raise ValueError(f"{name}: cpu and gpu resolve to different versions ({pins[name]}, {version})")
    import platform

    head = ("# Generated by `python docker/image_requirements.py lock > docker/constraints.txt`; do not edit.\n"
            "# Exact versions for the image's pip install (both variants); the dependency *list* is pyproject.toml.\n"
            f"# resolved-for: python {sys.version_info.major}.{sys.version_info.minor} {platform.system().lower()} "
            f"{platform.machine()}\n")
    return head + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items()))


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in (*VARIANTS, "lock") or len(argv) > 2:
        print(__doc__, file=sys.stderr)
        return 2
    path = Path(argv[1] if len(argv) > 1 else "pyproject.toml")
    with path.open("rb") as f:
        pyproject = tomllib.load(f)
    if argv[0] == "lock":
        sys.stdout.write(lock(pyproject))
    else:
        print("\n".join(requirements(pyproject, argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
