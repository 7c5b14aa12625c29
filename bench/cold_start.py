"""Cold start: from process start to the first streamed token.

Runs `python -m handler run --timings` on the embedded model in a new process,
and beside it a bare script (this file with --bare) that imports vLLM, boots
`AsyncLLM` with the same engine arguments and streams one token. Both print
seconds since their own process start at: imports done, engine ready, first
token. The parent also times spawn -> first token line itself. Runs alternate
so that machine noise hits both alike.

    .venv/bin/python bench/cold_start.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"
JOB = {"input": {"prompt": PROMPT, "sampling_params": {"temperature": 0, "max_tokens": 1}, "stream": True}}


def since_start() -> float:
    import psutil

    return time.time() - psutil.Process().create_time()


async def bare() -> None:
    """The floor: what any worker must spend to boot vLLM and generate. It
    imports vLLM directly, not through handler.vllm_internals (which also
    imports vLLM's OpenAI app): a floor must not pay for the worker's imports."""
    from vllm import SamplingParams  # bare floor: see the docstring
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.sampling_params import RequestOutputKind
    from vllm.v1.engine.async_llm import AsyncLLM

    marks = {"imports": since_start()}
    # the engine arguments the worker uses for the embedded model on CPU
    model = Path(os.environ.get("EMBEDDED_MODEL_DIR") or Path.home() / ".cache/vllm-worker/SmolLM2-135M-Instruct")
    engine_args = AsyncEngineArgs(model=str(model), enforce_eager=True, gpu_memory_utilization=0.3,
                                  served_model_name=["HuggingFaceTB/SmolLM2-135M-Instruct"])
    llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
    marks["engine_ready"] = since_start()
    params = SamplingParams(max_tokens=1, temperature=0, output_kind=RequestOutputKind.DELTA)
    async for _ in llm.generate(PROMPT, params, "bare"):
        marks.setdefault("first_item", since_start())
        print("[stream] token", flush=True)
    print(f"[timings] {json.dumps(marks)}", flush=True)
    llm.shutdown()


def measure(command: list[str]) -> dict[str, float]:
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
    spawned = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    result: dict[str, float] = {}
    for line in process.stdout:
        if line.startswith("[stream]") and "wall" not in result:
            result["wall"] = time.time() - spawned
        elif line.startswith("[timings]"):
            result.update(json.loads(line.split(" ", 1)[1]))
    if process.wait() != 0 or "first_item" not in result:
        raise RuntimeError(f"{command} failed (exit {process.returncode})")
    return result


def main(runs: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job_file:
        json.dump(JOB, job_file)
    commands = {
        "worker (python -m handler run)": [sys.executable, "-m", "handler", "run", "--timings", "--input", job_file.name],
        "bare AsyncLLM script": [sys.executable, str(Path(__file__).resolve()), "--bare"],
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, command in commands.items():
            results[name].append(measure(command))
    os.unlink(job_file.name)

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\ncold start on the embedded model, median of {runs} runs, {os.cpu_count()} CPUs "
          "(seconds since process start)")
    print("| process | imports | engine boot | first token | to first token | spawn -> first token (parent) |")
    print("|---|---|---|---|---|---|")
    for name in commands:
        imports, ready, first = (median(name, k) for k in ("imports", "engine_ready", "first_item"))
        print(f"| {name} | {imports:.2f} | {ready - imports:.2f} | {first - ready:.2f} | {first:.2f} | "
              f"{median(name, 'wall'):.2f} |")
    worker, floor = (median(n, "wall") for n in commands)
    print(f"\nthe worker adds {worker - floor:+.2f} s to the bare script (target: <= 1 s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare:
        asyncio.run(bare())
    else:
        main(options.runs)
