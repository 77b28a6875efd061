#!/usr/bin/env bash
# Mutation testing of the critical modules (mutmut 3, from the dev extra): mutation/run.sh [MODULE ...]
# Runs on a copy of the working tree in $RBN_MUTATION_WORK (default /tmp/rbn-mutation), at a lower CPU
# priority; reports in mutation/out/. See mutation/mutate.py and docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RBN_VENV:-.venv}
if ! "$VENV/bin/python" -c "import mutmut" 2>/dev/null; then
  echo "mutation/run.sh: mutmut is not installed in $VENV; run: $VENV/bin/pip install -e '.[dev]'" >&2
  exit 2
fi
exec nice -n "${RBN_MUTATION_NICE:-10}" "$VENV/bin/python" mutation/mutate.py "$@"
