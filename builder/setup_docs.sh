#!/usr/bin/env bash
# Create .venv-docs in the repository root: mkdocs and mkdocs-material
# (docs/requirements.txt, pinned, with docs/constraints.txt), apart from the
# worker's vLLM stack in .venv. `make docs` runs this; re-running it does
# nothing unless the requirements changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv-docs
stamp="$VENV/.deps-$(cat docs/requirements.txt docs/constraints.txt builder/setup_docs.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON" >&2; exit 1; }
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing the documentation tools (docs/requirements.txt)"
# (pip reads its -c constraints.txt beside it)
"$VENV/bin/python" -m pip install --quiet -r docs/requirements.txt
rm -f "$VENV"/.deps-*
touch "$stamp"
echo "==> $VENV is ready"
