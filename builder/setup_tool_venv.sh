#!/usr/bin/env bash
# Create a virtual environment of pinned tools apart from the worker's vLLM
# stack in .venv: `setup_tool_venv.sh VENV REQUIREMENTS`, where pip reads the
# constraints.txt beside REQUIREMENTS (its own `-c` line). The Makefile makes
# .venv-clients (the agent frameworks tests/test_frameworks.py drives, as
# users run them) and .venv-docs (mkdocs) with it. Re-running it does
# nothing unless the requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=$1
REQUIREMENTS=$2
PYTHON=${PYTHON:-python3}
stamp="$VENV/.deps-$(cat "$REQUIREMENTS" "$(dirname "$REQUIREMENTS")/constraints.txt" builder/setup_tool_venv.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON" >&2; exit 1; }
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing $REQUIREMENTS into $VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet -r "$REQUIREMENTS"
rm -f "$VENV"/.deps-*
touch "$stamp"
echo "==> $VENV is ready"
