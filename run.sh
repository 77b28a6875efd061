#!/usr/bin/env bash
# One entry point for a fresh machine: installs what the command needs, then runs it.
#   ./run.sh serve [rbn-serve serve flags...]   serve the shipped models on the CPU
#   ./run.sh test  [pytest args...]             run the whole test suite
#   ./run.sh rbn-serve <command> [args...]      any rbn-serve command (ab-eval, validate, models, ...)
#   ./run.sh rbn <command> [args...]            the training library's commands (installs the train extra)
#
# `serve` installs only the service (pyproject's [project] dependencies: FastAPI, uvicorn, ONNX Runtime,
# numpy, Pillow, ...; no torch) and no Debian package. `test` installs everything: the Debian packages
# the tests use and the `train` and `dev` extras. Both use the same .venv; `test` after `serve` adds to it.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${RBN_VENV:-.venv}
# The test suite's Debian packages: the data set (training and evaluation tests), Prometheus (promtool and
# the dashboard queries), HAProxy (the gateway config check), wrk (benchmark tests) and headless Chromium with
# its WebDriver (the page at /, tests/web, driven by Selenium from the dev extra), zstd (bench/gpu_stage.py
# compresses the GPU wheel for a device lease; tests/deploy/test_gpu_*). Serving needs none.
TEST_APT_PACKAGES=(dataset-fashion-mnist prometheus haproxy wrk chromium chromium-driver zstd)

install_debian_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "run.sh: installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

make_venv() {
  [ -x "$VENV/bin/python" ] && return 0
  # Debian and Ubuntu ship `venv` without ensurepip unless python3-venv is installed.
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    local minor
    minor=$(python3 -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')
    install_debian_packages "python${minor}-venv"
  fi
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
}

# pip install -e ".[extras]" (editable: the checkout's code and models/ are what runs), once: a stamp file in
# the venv holds pyproject.toml's hash, and the install runs again only when pyproject.toml changed (a new
# dependency). Code changes need no re-install (editable). An install with more extras satisfies one with fewer.
install_python() {
  make_venv
  local extras=${1:-} hash stamp enough
  hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
  case "$extras" in
    "") enough="base train train,dev" ;;
    train) enough="train train,dev" ;;
    *) enough="$extras" ;;
  esac
  for stamp in $enough; do
    stamp="$VENV/.rbn-serve-installed-$stamp"
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$hash" ] && return 0
  done
  echo "run.sh: installing rbn-serve${extras:+[$extras]} into $VENV (once; again only when pyproject.toml changes)" >&2
  # torch==2.13.0 resolves to the CPU build on these machines (see README for other machines). The filter hides
  # setuptools' note on editable installs (an information, not a problem) so that only real trouble prints.
  PYTHONWARNINGS="ignore:Editable installation" "$VENV/bin/python" -m pip install -q -e ".${extras:+[$extras]}"
  echo "$hash" > "$VENV/.rbn-serve-installed-${extras:-base}"
}

cmd=${1:-}
shift || true
case "$cmd" in
  serve)
    install_python ""
    exec "$VENV/bin/rbn-serve" serve "$@"
    ;;
  test)
    install_debian_packages "${TEST_APT_PACKAGES[@]}"
    install_python "train,dev"
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  rbn-serve)  # any rbn-serve command: ./run.sh rbn-serve ab-eval samples/fashion-mnist ...
    install_python ""
    exec "$VENV/bin/rbn-serve" "$@"
    ;;
  rbn)  # the training library's commands need the [train] extra (torch): ./run.sh rbn evaluate ...
    install_python "train"
    exec "$VENV/bin/rbn" "$@"
    ;;
  *)
    echo "usage: ./run.sh serve [flags] | ./run.sh test [pytest args] | ./run.sh rbn-serve|rbn <command> [args]" >&2
    exit 2
    ;;
esac
