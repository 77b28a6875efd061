#!/usr/bin/env bash
# One entry point for a fresh machine: installs what the project needs, then runs it.
#   ./run.sh serve [rbn-serve serve flags...]   serve the shipped models on the CPU
#   ./run.sh test  [pytest args...]             run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

VENV=${RBN_VENV:-.venv}
APT_PACKAGES=(dataset-fashion-mnist prometheus haproxy wrk)

install_debian_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "run.sh: installing Debian packages: ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python() {
  local extras=$1
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch==2.13.0 resolves to the CPU build on these machines (see README).
  "$VENV/bin/python" -m pip install -q -e ".[$extras]"
}

install_everything() {
  install_debian_packages
  install_python "train,dev"
}

cmd=${1:-}
shift || true
case "$cmd" in
  serve)
    install_everything
    exec "$VENV/bin/rbn-serve" serve "$@"
    ;;
  test)
    install_everything
    exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh serve [flags] | ./run.sh test [pytest args]" >&2
    exit 2
    ;;
esac
