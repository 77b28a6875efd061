"""Make the CUDA 13 / cuDNN 9 wheels visible to the dynamic loader, and prove ONNX Runtime's CUDA provider links.

`onnxruntime-gpu[cuda,cudnn]` installs CUDA and cuDNN as wheels under `site-packages/nvidia/*/lib`, but its
`libonnxruntime_providers_cuda.so` has no RPATH to them (ONNX Runtime expects `onnxruntime.preload_dlls()`
or a library path). The image build runs

    python check_gpu_libs.py --register

which writes those folders to /etc/ld.so.conf.d/ and runs `ldconfig`, so every process in the container
(the server, `python -c`, anything) resolves them without LD_LIBRARY_PATH. The NVIDIA Container Toolkit
keeps that configuration when it adds the driver's libraries at container start.

Then, and on every later run without `--register` (for instance `docker compose exec api python
/app/check_gpu_libs.py` while troubleshooting), it checks that the CUDA provider and the libraries it
loads resolve every dependency except `libcuda.so.1`, which the driver brings at run time. On a machine
with a GPU it also says whether the driver is visible and CUDA sessions can be made. Exit 0 when linkable.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

CONF = Path("/etc/ld.so.conf.d/rbn-serve-nvidia.conf")
DRIVER_LIBS = {"libcuda.so.1", "libnvidia-ml.so.1"}  # mounted by the NVIDIA Container Toolkit at run time
# Loaded by dlopen (not NEEDED by the provider), so ldd of the provider alone would not catch them missing.
DLOPENED = ("libcudnn.so.9", "libcufft.so.", "libnvrtc.so.")


def site_packages_nvidia() -> Path:
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("no `nvidia` package: install onnxruntime-gpu[cuda,cudnn]")
    return Path(next(iter(spec.submodule_search_locations)))


def library_dirs(root: Path) -> list[Path]:
    return sorted({p.parent for p in root.glob("**/lib/lib*.so*")})


def provider_library() -> Path:
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise SystemExit("onnxruntime is not installed")
    lib = Path(spec.origin).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not lib.exists():
        raise SystemExit(f"{lib} is missing: this is the CPU onnxruntime wheel, not onnxruntime-gpu")
    return lib


def unresolved(lib: Path) -> set[str]:
    """Libraries `ldd` cannot find for ``lib``, less the driver's own."""
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=True).stdout
    missing = set(re.findall(r"^\s*(\S+) => not found", out, re.MULTILINE))
    return missing - DRIVER_LIBS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--register", action="store_true", help="write the ld.so.conf.d entry and run ldconfig")
    args = parser.parse_args(argv)

    dirs = library_dirs(site_packages_nvidia())
    if not dirs:
        print("no CUDA libraries under site-packages/nvidia", file=sys.stderr)
        return 1
    if args.register:
        CONF.write_text("".join(f"{d}\n" for d in dirs))
        subprocess.run(["ldconfig"], check=True)
        print(f"registered {len(dirs)} library folders in {CONF}")

    candidates = [provider_library()]
    for d in dirs:
        candidates += [p for p in sorted(d.glob("lib*.so*")) if p.name.startswith(DLOPENED)]
    problems = {}
    for lib in candidates:
        missing = unresolved(lib)
        if missing:
            problems[lib.name] = sorted(missing)
    for prefix in DLOPENED:
        if not any(p.name.startswith(prefix) for p in candidates):
            problems[prefix + "*"] = []
    if problems:
        for name, missing in problems.items():
            why = f"cannot resolve {', '.join(missing)}" if missing else "not installed"
            print(f"{name}: {why}", file=sys.stderr)
        return 1
    print(f"CUDA provider links: {', '.join(p.name for p in candidates)}")

    if not args.register:  # at run time: is the driver there too?
        import onnxruntime as ort

        print(f"onnxruntime {ort.__version__}, providers {ort.get_available_providers()}")
        try:
            import ctypes

            ctypes.CDLL("libcuda.so.1")
            print("driver: libcuda.so.1 loaded (GPU visible to this container)")
        except OSError:
            print("driver: libcuda.so.1 not found - start the container with a GPU "
                  "(compose deploy.resources.reservations.devices, or docker run --gpus all) "
                  "and the NVIDIA Container Toolkit", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
