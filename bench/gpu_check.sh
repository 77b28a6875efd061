#!/usr/bin/env bash
# One unattended GPU check for a machine with an NVIDIA GPU and no internet (Python 3.12, torch
# with CUDA, onnxruntime (CPU) and onnx preinstalled).
#
# Before, on a machine with internet: fetch the wheels the GPU service needs, listed by the same resolver
# and inputs as the GPU image (docker/image_requirements.py + docker/constraints.txt, pip's resolver, so
# transitive dependencies such as starlette, pydantic-core, annotated-types come along):
#   bash bench/gpu_check.sh --fetch DIR      # then carry DIR over as $PARTS_DIR (split big wheels if needed)
#
# On the GPU machine it:
#   1. joins the onnxruntime-gpu wheel from the parts brought along (if split), then installs the GPU
#      image's requirement list offline with pip's resolver (`--no-index --find-links $PARTS_DIR
#      --target $SITE -r <list> -c docker/constraints.txt`): a missing wheel is named by pip. If that
#      fails, onnxruntime-gpu alone is installed (`--no-deps`) and the service part is skipped;
#   2. puts $SITE first on PYTHONPATH (so `import onnxruntime` is the GPU build) and pip's CUDA and
#      cuDNN libraries on LD_LIBRARY_PATH (gpu_bench.py also imports torch before onnxruntime, which
#      loads them; the service never imports torch);
#   3. checks the CUDA provider on a tiny graph (bench/gpu_bench.py --preflight);
#   4. runs bench/gpu_bench.py --providers cuda: RBN-ResNet-50 vs BN-ResNet-50 (random weights,
#      224x224, folded export; BN also the ordinary way) at batch 1, 32, 128 with and without
#      IOBinding and CUDA graphs, then the service on that machine under high concurrency. If ORT's
#      CUDA provider does not work it times the networks with torch on CUDA and says so plainly.
# Everything is printed; the Markdown section is also written to $OUT/gpu_check.md.
#
#   bash bench/gpu_check.sh [more bench/gpu_bench.py flags, e.g. --batches 1,32,128 --seconds 2]
#   bash bench/gpu_check.sh --install-only      # steps 1-2 only: exit 0 when the whole list installed
#   bash bench/gpu_check.sh --print-requirements   # the requirement list steps 1 and --fetch use
#
# Environment (all optional):
#   PARTS_DIR      folder with ort.part.* (the wheel split, e.g. `split -b 40M onnxruntime_gpu-*.whl
#                  ort.part.`), optional ort.name (the wheel's real file name, as `pip download` saved
#                  it), optional ort.sha256 (its sha256), and other *.whl to install   [/tmp/parts]
#   ORT_WHEEL      file name for the joined wheel (wins over ort.name)
#   SITE           pip --target folder                                                   [/tmp/site]
#   PYTHON         interpreter                                                           [python3]
#   BENCH_TIMEOUT  seconds for gpu_bench.py before it is stopped                         [450]
#   OUT            folder for gpu_check.md                                               [/tmp]
#   GPU_CHECK_VARIANT  image_requirements.py variant: gpu (as the image: CUDA and cuDNN as wheels) or
#                  gpu-host (the machine's own CUDA libraries, e.g. torch's)                [gpu]
#   FETCH_PYTHON_VERSION, FETCH_PLATFORMS  --fetch: the GPU machine's Python and wheel platforms
#                  [3.12; manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64]
# Exit status: gpu_bench.py's (0 all measured; 1 the service part not measured or failed; 2 ORT's
# CUDA provider not measured), or 3 when the wheel could not be installed (torch timings still run).
set -uo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 3
ROOT=$(pwd)
PARTS_DIR=${PARTS_DIR:-/tmp/parts}
SITE=${SITE:-/tmp/site}
PYTHON=${PYTHON:-python3}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-450}
RESULT_DIR=${OUT:-/tmp}
DEFAULT_WHEEL=onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
VARIANT=${GPU_CHECK_VARIANT:-gpu}
FETCH_PYTHON_VERSION=${FETCH_PYTHON_VERSION:-3.12}
FETCH_PLATFORMS=${FETCH_PLATFORMS:-manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64}

say() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The GPU image's requirement list (the service's dependencies, onnxruntime swapped for the gpu extra).
requirements() { "$PYTHON" docker/image_requirements.py "$VARIANT" pyproject.toml; }

mode=run
case "${1:-}" in
  --print-requirements)
    requirements
    exit $?
    ;;
  --fetch)
    dest=${2:?usage: bash bench/gpu_check.sh --fetch DIR}
    mkdir -p "$dest" && requirements > "$dest/requirements.txt" || exit 3
    platforms=()
    for p in $FETCH_PLATFORMS; do platforms+=(--platform "$p"); done
    say "downloading the $VARIANT list for CPython $FETCH_PYTHON_VERSION ($FETCH_PLATFORMS) into $dest"
    "$PYTHON" -m pip download --quiet --only-binary=:all: --implementation cp --python-version "$FETCH_PYTHON_VERSION" \
      "${platforms[@]}" -r "$dest/requirements.txt" -c docker/constraints.txt -d "$dest" || exit 3
    say "$(find "$dest" -maxdepth 1 -name '*.whl' | wc -l) wheels in $dest"
    exit 0
    ;;
  --install-only)
    mode=install
    shift
    ;;
esac

say "machine: $(uname -srm), $(nproc) CPUs; $("$PYTHON" --version 2>&1)"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 30 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv >&2 || say "nvidia-smi failed"
else
  say "nvidia-smi not found"
fi

# --- 1. the onnxruntime-gpu wheel --------------------------------------------------------------
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
wheel_name=${ORT_WHEEL:-}
if [ -z "$wheel_name" ] && [ -s "$PARTS_DIR/ort.name" ]; then
  wheel_name=$(head -n1 "$PARTS_DIR/ort.name" | tr -d '[:space:]')
fi
wheel_name=$(basename "${wheel_name:-$DEFAULT_WHEEL}")
mapfile -t parts < <(find "$PARTS_DIR" -maxdepth 1 -type f -name 'ort.part.*' 2>/dev/null | sort -V)
mapfile -t whole < <(find "$PARTS_DIR" -maxdepth 1 -type f -name 'onnxruntime_gpu-*.whl' 2>/dev/null | sort)
wheel=""
if [ "${#parts[@]}" -gt 0 ]; then
  say "joining ${#parts[@]} parts (${parts[0]##*/} .. ${parts[-1]##*/}) into $wheel_name"
  wheel="$WORK/$wheel_name"
  cat "${parts[@]}" > "$wheel" || wheel=""
elif [ "${#whole[@]}" -gt 0 ]; then
  wheel=${whole[0]}
  say "using the whole wheel $wheel"
else
  say "no $PARTS_DIR/ort.part.* and no onnxruntime_gpu-*.whl there"
fi
if [ -n "$wheel" ] && [ -s "$PARTS_DIR/ort.sha256" ]; then
  want=$(awk '{print $1; exit}' "$PARTS_DIR/ort.sha256")
  got=$(sha256sum "$wheel" | awk '{print $1}')
  if [ "$want" != "$got" ]; then
    say "sha256 mismatch: $got, ort.sha256 says $want"
    wheel=""
  else
    say "sha256 ok ($got)"
  fi
fi

installed=0
complete=0
mkdir -p "$SITE"
links=(--find-links "$PARTS_DIR")
[ -n "$wheel" ] && links+=(--find-links "$(dirname "$wheel")")
if requirements > "$WORK/requirements.txt" \
   && timeout 600 "$PYTHON" -m pip install --no-index "${links[@]}" --only-binary=:all: --no-compile --no-cache-dir \
        --upgrade --target "$SITE" -r "$WORK/requirements.txt" -c docker/constraints.txt > "$WORK/pip.log" 2>&1; then
  installed=1
  complete=1
  say "installed the $VARIANT list ($(grep -c . "$WORK/requirements.txt") requirements and their dependencies) into $SITE"
else
  grep -E "ERROR|conflict is caused|depends on|No matching distribution|Could not find" "$WORK/pip.log" | tail -n 12 >&2
  say "the $VARIANT list does not install from $PARTS_DIR (pip names the missing wheel above); fetch it with" \
      "bash bench/gpu_check.sh --fetch DIR on a machine with internet. The service part will be skipped."
  if [ -n "$wheel" ] && timeout 300 "$PYTHON" -m pip install -q --no-deps --no-index --no-compile --no-cache-dir \
       --upgrade --target "$SITE" "$wheel"; then
    installed=1
    say "installed $(basename "$wheel") alone into $SITE"
  elif [ -n "$wheel" ]; then
    say "pip could not install $wheel"
  fi
fi
if [ "$mode" = install ]; then
  [ "$complete" -eq 1 ] && exit 0
  exit 3
fi

# --- 2. environment ----------------------------------------------------------------------------
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cuda_libs=$(timeout 120 "$PYTHON" bench/gpu_bench.py --cuda-lib-path 2>/dev/null | tail -n1)
if [ -n "$cuda_libs" ]; then
  export LD_LIBRARY_PATH="$cuda_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  say "LD_LIBRARY_PATH += pip's CUDA/cuDNN folders ($(tr ':' '\n' <<<"$cuda_libs" | wc -l))"
else
  say "no pip CUDA/cuDNN library folders found; relying on the system's"
fi

# --- 3. is the CUDA provider there? --------------------------------------------------------------
if timeout 180 "$PYTHON" bench/gpu_bench.py --preflight; then
  say "preflight: ONNX Runtime's CUDA provider is active"
else
  say "preflight: ONNX Runtime's CUDA provider is NOT active (gpu_bench.py will time torch instead)"
fi

# --- 4. the measurements -------------------------------------------------------------------------
mkdir -p "$RESULT_DIR"
timeout --kill-after=30 "$BENCH_TIMEOUT" "$PYTHON" bench/gpu_bench.py --providers cuda \
  --out "$RESULT_DIR/gpu_check.md" "$@"
rc=$?
case $rc in
  0) say "done: everything measured; Markdown in $RESULT_DIR/gpu_check.md" ;;
  1) say "done: ORT measured, the service part not measured or failed (see above)" ;;
  2) say "done: ORT's CUDA provider NOT measured (see above)" ;;
  124|137) say "gpu_bench.py ran past ${BENCH_TIMEOUT}s and was stopped (progress lines above hold what it measured)" ;;
  *) say "gpu_bench.py failed with exit status $rc" ;;
esac
if [ "$installed" -eq 0 ] && [ "$rc" -ne 0 ]; then
  exit 3
fi
exit "$rc"
