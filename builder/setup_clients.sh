#!/usr/bin/env bash
# Create .venv-clients in the repository root: the agent frameworks that
# tests/test_frameworks.py drives against the worker (tests/clients/requirements.txt),
# apart from the worker's vLLM stack in .venv, the way users run them. `make test`
# runs this; re-running it does nothing unless the requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-clients
stamp="$VENV/.deps-$(cat tests/clients/requirements.txt tests/clients/constraints.txt builder/setup_clients.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON" >&2; exit 1; }
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing the agent frameworks the tests drive (tests/clients/requirements.txt)"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
# (pip reads its -c constraints.txt beside it)
"$VENV/bin/python" -m pip install --quiet -r tests/clients/requirements.txt
rm -f "$VENV"/.deps-*
touch "$stamp"
echo "==> $VENV is ready"
