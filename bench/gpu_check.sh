#!/usr/bin/env bash
# The GPU check that fits one device lease (issue #27): the lent machine has Python 3.12, torch 2.11+cu130
# (CUDA 13, cuDNN 9), onnx and the CPU onnxruntime, no network, no Docker, no wrk; a call carries at most
# 64 MiB and the lease is 15 minutes of device time in all.
#
# Here, first:   python bench/gpu_stage.py     # stages .gpu-stage/call-1..N and prints the call sequence
# On the device, one call per staged folder, back to back, each carrying only its own folder:
#   bash bench/gpu_check.sh --stage          # calls 1..N-1: take in the carried part(s), check sha256
#   bash bench/gpu_check.sh                  # call N: take in the last part, then the whole check below
#
# The check (the variant `gpu-host`: onnxruntime-gpu alone, CUDA and cuDNN from the machine's torch), in
# steps, smallest first, each under its own time budget inside GPU_CHECK_BUDGET_S, so that a step that
# fails or runs out of time costs only itself; the report says what is missing:
#   stage      take in the carried part(s)
#   join       join the parts, check sha256, decompress (zstd, or the carried zstandard wheel; xz: lzma)
#   install    pip install --no-deps --no-index --target $SITE the wheel and the small wheels; import check
#   provider   ONNX Runtime's CUDA provider on a tiny graph (bench/gpu_bench.py --preflight)
#   shipped    RBN/BN latency with ORT CUDA for the shipped pair (models/fmnist-resnet20-rbn and its baseline)
#   export-A, time-A   for each A in GPU_CHECK_ARCHS: the graphs exported by torch (EXPORT_PYTHON; started
#              in the background by the first --stage call, so usually ready), then RBN vs BN at
#              GPU_CHECK_BATCHES with session.run, IOBinding and CUDA graphs
#   service    the service (python -m service.cli serve --providers cuda) on the first arch's RBN graph under
#              GPU_CHECK_CONCURRENCY, with bench/httpload.py (asyncio + httpx, in-process, no wrk)
#   memory     GPU memory per model (NVML), one process per graph
# Everything is teed to $OUT as it runs: gpu_check.log (all output), gpu_check.md (each step's Markdown),
# summary.md and steps.tsv (every step: status, seconds, budget), rewritten after each step.
#
#   bash bench/gpu_check.sh --print-requirements    # the gpu-host requirement list (docker/image_requirements.py)
#
# Environment (all optional):
#   STAGE_SRC        the carried staging folder                                     [<repo>/.gpu-stage]
#   STAGE_DIR        where parts accumulate on the warm machine                      [/tmp/gpu-stage]
#   SITE             pip --target folder                                             [/tmp/gpu-site]
#   PYTHON           the interpreter that measures                                  [python3]
#   EXPORT_PYTHON    the interpreter with torch that exports the graphs            [$PYTHON]
#   OUT              results folder                                                 [/tmp/gpu-check-out]
#   GPU_CHECK_PROVIDER     cuda, or cpu for the dry run                             [cuda]
#   GPU_CHECK_SIMULATION   1: every section says it is a CPU simulation             [0]
#   GPU_CHECK_BUDGET_S     seconds for the whole check (the last call)              [300]
#   GPU_CHECK_ARCHS        [resnet50 efficientnet-lite0]   GPU_CHECK_BATCHES [1,32,128]
#   GPU_CHECK_SECONDS      seconds per timed cell [0.5]      GPU_CHECK_CONCURRENCY [64,256]
#   GPU_CHECK_SERVICE_S    seconds per concurrency row [8]   GPU_CHECK_SHIPPED [fmnist-resnet20-rbn]
#   GPU_CHECK_EXPORT_AHEAD 0: no background export in the --stage calls        [1]
#   GPU_CHECK_CLIENTS      load-generator processes [4]      GPU_CHECK_STEP_SCALE  every step budget x this [1]
# Exit status: 0 every step ok; 1 some step failed, timed out or was skipped (summary.md says which);
# 2 the staging is incomplete (a --stage call, or the last call before all parts arrived).
set -uo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
STAGE_SRC=${STAGE_SRC:-$ROOT/.gpu-stage}
STAGE_DIR=${STAGE_DIR:-/tmp/gpu-stage}
SITE=${SITE:-/tmp/gpu-site}
PYTHON=${PYTHON:-python3}
EXPORT_PYTHON=${EXPORT_PYTHON:-$PYTHON}
RESULT_DIR=${OUT:-/tmp/gpu-check-out}
PROVIDER=${GPU_CHECK_PROVIDER:-cuda}
SIMULATION=${GPU_CHECK_SIMULATION:-0}
BUDGET_S=${GPU_CHECK_BUDGET_S:-300}
ARCHS=${GPU_CHECK_ARCHS:-resnet50 efficientnet-lite0}
BATCHES=${GPU_CHECK_BATCHES:-1,32,128}
SECONDS_PER_CELL=${GPU_CHECK_SECONDS:-0.5}
CONCURRENCY=${GPU_CHECK_CONCURRENCY:-64,256}
SERVICE_S=${GPU_CHECK_SERVICE_S:-8}
SHIPPED=${GPU_CHECK_SHIPPED:-fmnist-resnet20-rbn}
CLIENTS=${GPU_CHECK_CLIENTS:-4}
SCALE=${GPU_CHECK_STEP_SCALE:-1}
export PYTHONUNBUFFERED=1

say() { printf '[gpu_check %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

case "${1:-}" in
  --print-requirements)
    "$PYTHON" docker/image_requirements.py gpu-host pyproject.toml
    exit $?
    ;;
  --stage)
    "$PYTHON" bench/gpu_stage.py --receive "$STAGE_SRC" "$STAGE_DIR" || exit 2
    # The exports run in torch's interpreter without $SITE (its compiled wheels are the measuring Python's);
    # the one pure-Python package they need from the staged wheels (EfficientNet-Lite0's architecture) is
    # unpacked beside them instead.
    for w in "$STAGE_DIR"/wheels/efficientnet_lite_pytorch-*.whl; do
      [ -e "$w" ] && "$PYTHON" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' \
        "$w" "$STAGE_DIR/export-site"
    done
    # The exports need torch only, not the wheel still on its way: start them now, in their own session (a
    # call's processes end with it, a setsid one runs on while the machine stays warm), so that they run
    # during the staging calls, which the lease pays for anyway. The last call takes what they finished.
    ahead=$STAGE_DIR/graphs-ahead
    if [ "${GPU_CHECK_EXPORT_AHEAD:-1}" = 1 ] && mkdir -p "$STAGE_DIR" && mkdir "$ahead" 2>/dev/null; then
      setsid nohup bash -c '
        for arch in $0; do
          env PYTHONPATH="$2:$4" timeout 240 "$1" bench/gpu_bench.py --export-only "$3/$arch.tmp" --arch "$arch" \
            && mv "$3/$arch.tmp" "$3/$arch"
        done
        touch "$3/done"' "$ARCHS" "$EXPORT_PYTHON" "$ROOT" "$ahead" "$STAGE_DIR/export-site" \
        > "$STAGE_DIR/graphs-ahead.log" 2>&1 < /dev/null &
      echo $! > "$ahead/pid"
      echo "[stage] exporting $ARCHS ahead in the background (pid $(cat "$ahead/pid"), log $STAGE_DIR/graphs-ahead.log)" >&2
    fi
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: bash bench/gpu_check.sh [--stage | --print-requirements]" >&2
    exit 2
    ;;
esac

mkdir -p "$RESULT_DIR" || exit 2
LOG=$RESULT_DIR/gpu_check.log
REPORT=$RESULT_DIR/gpu_check.md
STEPS=$RESULT_DIR/steps.tsv
SUMMARY=$RESULT_DIR/summary.md
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
GRAPHS=$WORK/graphs
: > "$REPORT"
printf 'step\tstatus\tseconds\tbudget_s\n' > "$STEPS"
exec > >(tee -a "$LOG") 2>&1
START=$(date +%s.%N)
DEADLINE=$(awk -v s="$START" -v b="$BUDGET_S" 'BEGIN { printf "%.3f", s + b }')
label=GPU
[ "$SIMULATION" = 1 ] && label="SIMULATION (CPU provider standing in for CUDA; no GPU figure; step budgets x$SCALE)"
say "$label check: budget ${BUDGET_S} s; machine $(uname -srm), $(nproc) CPUs; $("$PYTHON" --version 2>&1)"
if command -v nvidia-smi >/dev/null 2>&1; then
  timeout 20 nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.used --format=csv || say "nvidia-smi failed"
else
  say "nvidia-smi not found"
fi

summary() {
  {
    echo "# bench/gpu_check.sh: $label"
    echo
    echo "| step | status | seconds | budget s |"
    echo "|---|---|---|---|"
    tail -n +2 "$STEPS" | awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }'
    echo
    missing=$(tail -n +2 "$STEPS" | awk -F'\t' '$2 != "ok" { printf "%s%s", sep, $1; sep=", " }')
    echo "Missing (a step not ok): ${missing:-none}."
  } > "$SUMMARY"
}

# step NAME BUDGET COMMAND...: run with a timeout of min(BUDGET, time left); record status and seconds.
step() {
  local name=$1 budget
  budget=$(awk -v b="$2" -v s="$SCALE" 'BEGIN { printf "%d", b * s }')
  shift 2
  local now left limit t0 rc status secs
  now=$(date +%s.%N)
  left=$(awk -v d="$DEADLINE" -v n="$now" 'BEGIN { printf "%d", d - n }')
  if [ "$left" -lt 5 ]; then
    printf '%s\tskipped: budget spent\t0\t%s\n' "$name" "$budget" >> "$STEPS"
    say "step $name: skipped, the check's ${BUDGET_S} s are spent"
    summary
    return 1
  fi
  limit=$budget
  [ "$left" -lt "$limit" ] && limit=$left
  say "step $name: starting (budget ${budget} s, limit ${limit} s)"
  t0=$(date +%s.%N)
  timeout --kill-after=5 "$limit" bash -c '"$@"' step "$@"
  rc=$?
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124|137) status="timed out" ;;
    *) status="failed (exit $rc)" ;;
  esac
  if [ -s "$WORK/step.md" ]; then
    cat "$WORK/step.md" >> "$REPORT"
    echo >> "$REPORT"
  fi
  rm -f "$WORK/step.md"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$budget" >> "$STEPS"
  say "step $name: $status in ${secs} s"
  summary
  [ "$rc" -eq 0 ]
}

measure_env() { env PYTHONPATH="$SITE:$ROOT" "$@"; }
bench() { measure_env "$PYTHON" bench/gpu_bench.py --providers "$PROVIDER" --out "$WORK/step.md" "$@"; }
sim=()
[ "$SIMULATION" = 1 ] && sim=(--simulation)

join_wheel() {
  "$PYTHON" bench/gpu_stage.py --join "$STAGE_DIR" > "$WORK/wheel.path" || return 1
  [ -s "$WORK/wheel.path" ]
}

install() {
  local wheel
  wheel=$(cat "$WORK/wheel.path")
  rm -rf "$SITE" && mkdir -p "$SITE" || return 1
  local wheels=("$STAGE_DIR"/wheels/*.whl)
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "$wheel" "${wheels[@]}" || return 1
  # the import check: every service module imports from $SITE, and onnxruntime is the GPU build
  measure_env "$PYTHON" - "$SITE" <<'PY'
import importlib, sys
from pathlib import Path
site = Path(sys.argv[1]).resolve()
for name in ("fastapi", "starlette", "uvicorn", "pydantic", "pydantic_settings", "multipart", "prometheus_client",
             "PIL", "orjson", "uvloop", "httptools", "httpx", "pynvml", "onnx", "numpy", "service.http.app", "service.cli"):
    importlib.import_module(name)
import onnxruntime as ort
where = Path(ort.__file__).resolve()
assert site in where.parents, f"onnxruntime comes from {where}, not {site}"
print(f"import check ok: onnxruntime {ort.__version__} from {where.parent}; providers {ort.get_available_providers()}")
PY
}

provider_check() {
  if [ "$PROVIDER" = cuda ]; then
    measure_env "$PYTHON" bench/gpu_bench.py --preflight
  else
    measure_env "$PYTHON" bench/gpu_bench.py --preflight --providers cpu
  fi
}

export_arch() {
  # Graphs exported ahead during the staging calls (see --stage): take them, or wait for the export under way.
  local ahead=$STAGE_DIR/graphs-ahead
  if [ -d "$ahead" ]; then
    while [ ! -e "$ahead/$1/meta.json" ] && [ ! -e "$ahead/done" ] && kill -0 "$(cat "$ahead/pid" 2>/dev/null)" 2>/dev/null; do
      sleep 0.5
    done
    if [ -e "$ahead/$1/meta.json" ]; then
      cp -r "$ahead/$1" "$GRAPHS/$1" && echo "$1: graphs exported ahead, during the staging calls" && return 0
    fi
    echo "$1: no graphs from the export ahead ($(tail -n 3 "$STAGE_DIR/graphs-ahead.log" 2>/dev/null | tr '\n' ' ')); exporting now"
  fi
  # torch's interpreter, without $SITE (its packages are the measuring Python's, which may differ)
  env PYTHONPATH="$ROOT:$STAGE_DIR/export-site" "$EXPORT_PYTHON" bench/gpu_bench.py --export-only "$GRAPHS/$1" \
    --arch "$1" --providers "$PROVIDER"
}

# the steps run under `timeout`, in a child bash: it needs these
mkdir -p "$GRAPHS"
export ROOT STAGE_SRC STAGE_DIR SITE PYTHON EXPORT_PYTHON PROVIDER WORK GRAPHS
export -f measure_env bench join_wheel install provider_check export_arch

# --- the steps -----------------------------------------------------------------------------------
ok_install=0
step stage 10 "$PYTHON" bench/gpu_stage.py --receive "$STAGE_SRC" "$STAGE_DIR"
if ! step join 20 join_wheel; then
  printf 'install\tnot run: no wheel\t0\t0\n' >> "$STEPS"
elif step install 30 install; then
  ok_install=1
fi
if [ "$ok_install" -eq 1 ]; then
  step provider 20 provider_check
  step shipped 20 bench --shipped "$SHIPPED" --no-service --batches "$BATCHES" --seconds "$SECONDS_PER_CELL" --iters 5 "${sim[@]}"
  exported=()
  for arch in $ARCHS; do
    budget_export=45; budget_time=45
    [ "$arch" = efficientnet-lite0 ] && { budget_export=30; budget_time=30; }
    if step "export-$arch" "$budget_export" export_arch "$arch"; then
      exported+=("$arch")
      step "time-$arch" "$budget_time" bench --graphs "$GRAPHS/$arch" --no-service --batches "$BATCHES" \
        --seconds "$SECONDS_PER_CELL" --iters 5 "${sim[@]}"
    else
      say "no graphs for $arch (the export failed: see the log); its timing is missing"
      printf '%s\tnot run: no graphs\t0\t0\n' "time-$arch" >> "$STEPS"
    fi
  done
  if [ "${#exported[@]}" -gt 0 ]; then
    step service 40 bench --graphs "$GRAPHS/${exported[0]}" --service-only --service-concurrency "$CONCURRENCY" \
      --service-duration "$SERVICE_S" --service-warmup 2 --client-processes "$CLIENTS" "${sim[@]}"
    memory_dirs=()
    for arch in "${exported[@]}"; do memory_dirs+=(--graphs "$GRAPHS/$arch"); done
    step memory 20 bench "${memory_dirs[@]}" --memory --batches 32
  else
    printf 'service\tnot run: no graphs\t0\t0\nmemory\tnot run: no graphs\t0\t0\n' >> "$STEPS"
  fi
else
  for name in provider shipped service memory; do
    printf '%s\tnot run: the install failed\t0\t0\n' "$name" >> "$STEPS"
  done
fi
summary
cat "$SUMMARY"
total=$(awk -v a="$START" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
say "done in ${total} s; results in $RESULT_DIR (gpu_check.md, summary.md, steps.tsv, gpu_check.log)"
if ! grep -q $'^join\tok' "$STEPS"; then
  exit 2  # the staging is incomplete or broken (the join step says which)
fi
if tail -n +2 "$STEPS" | awk -F'\t' '$2 != "ok" { bad = 1 } END { exit bad ? 0 : 1 }'; then
  exit 1
fi
exit 0
