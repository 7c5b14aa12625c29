"""Load-balancing mode against queue mode and bare AsyncLLM.

Throughput and time to first token: the same 16 concurrent streamed requests
of 128 generated tokens (ignore_eos, greedy) go through

  (a) AsyncLLM.generate in this process (the ceiling: no app, no HTTP)
  (b) load-balancing mode: `python -m handler http`, POST /v1/completions
  (c) queue mode: `python -m handler serve` (the local endpoint, RunPod's
      queue API on this machine), POST /openai/v1/completions

over loopback HTTP for (b) and (c). Each path has its own engine, booted in
turn (one at a time), a warm-up round, then the measured rounds.

Cold start: spawn -> first 200 on /ping of `python -m handler http`, against
a bare script that imports vLLM and boots AsyncLLM with the same engine
arguments (spawn -> engine ready), and how long after the engine was ready
/ping said 200 (the mode's log has the moment; /ping is polled every 20 ms).

    .venv/bin/python bench/load_balancing.py --rounds 5 --cold-runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

import common  # noqa: E402 - after the path
from common import CONCURRENCY, PROMPT, TOKENS, Measure, direct, round_of  # noqa: E402

from handler.config import EMBEDDED_SERVED_NAME as MODEL  # noqa: E402

POLL_S = 0.02
READY_LINE = re.compile(r"^(\S+ \S+) INFO handler\.engine: engine ready in")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m handler <command> --port P` in a subprocess, its log in a file."""

    def __init__(self, command: str) -> None:
        self.port = free_port()
        self.log = Path(tempfile.mkstemp(prefix=f"bench-{command}-", suffix=".log")[1])
        # The worker's "engine ready" line marks the moment /ping may say 200. Without
        # SAGEMAKER_CONTAINER_LOG_LEVEL, a module vLLM's app imports sets the root
        # logger to ERROR, and the worker's INFO lines after the boot are lost.
        env = {
            **os.environ,
            "MAX_CONCURRENCY": str(CONCURRENCY),
            "UVICORN_LOG_LEVEL": "warning",
            "VLLM_LOGGING_LEVEL": "INFO",
            "SAGEMAKER_CONTAINER_LOG_LEVEL": "INFO",
        }
        self.spawned = time.time()
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "handler", command, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def engine_ready_at(self) -> float:
        for line in self.log.read_text(errors="replace").splitlines():
            found = READY_LINE.match(line)
            if found:
                return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        raise RuntimeError(f"no 'engine ready' line in {self.log}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def wait_ready(http, server: Server, path: str) -> dict[str, float]:
    """Poll ``path`` until 200; seconds from spawn to the first 204 and the first 200."""
    import httpx

    marks: dict[str, float] = {}
    while True:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.process.args!r} exited; see {server.log}")
        try:
            status = (await http.get(server.url + path)).status_code
        except httpx.TransportError:
            status = 0
        now = time.time()
        if status == 204:
            marks.setdefault("first_204", now - server.spawned)
        if status == 200:
            marks["first_200"] = now - server.spawned
            marks["at"] = now
            return marks
        await asyncio.sleep(POLL_S)


async def over_http(http, url: str) -> tuple[float, int]:
    """One streamed /v1/completions: time to the first text, tokens generated."""
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "max_tokens": TOKENS,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first = None
    count = 0
    async with http.stream("POST", url, json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"{url} answered {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if first is None and any(choice.get("text") for choice in event.get("choices", [])):
                first = time.perf_counter() - start
            if event.get("usage"):
                count = event["usage"]["completion_tokens"]
    assert first is not None, "no token came back"
    return first, count


async def measure(make: Measure, rounds: int) -> tuple[list[float], list[float]]:
    """A warm-up round, then ``rounds`` rounds: tokens/s of each, every first-token time."""
    await round_of(make)
    rates: list[float] = []
    firsts: list[float] = []
    for _ in range(rounds):
        rate, first = await round_of(make)
        rates.append(rate)
        firsts += first
    return rates, firsts


async def throughput(rounds: int) -> None:
    """One engine at a time (three at once do not fit beside other work in
    CI's memory): the bare engine in this process, then each mode's process."""
    import httpx

    from handler.engine import Engine
    from handler.settings import Settings

    engine = Engine(Settings.from_env())
    ready = await engine.start()
    base = await measure(lambda: direct(ready.llm), rounds)
    await engine.shutdown()
    base_rate, base_ttft = statistics.median(base[0]), statistics.median(base[1])
    print(
        f"\n{CONCURRENCY} concurrent streams x {TOKENS} tokens, {rounds} rounds, "
        f"{os.cpu_count()} CPUs, model {ready.served_model}"
    )
    print("| path | tokens/s (median) | ratio to (a) | first token p50 (ms) | vs (a) (ms) |")
    print("|---|---|---|---|---|")

    def row(name: str, rates: list[float], firsts: list[float]) -> None:
        rate, ttft = statistics.median(rates), statistics.median(firsts)
        print(
            f"| {name} | {rate:.1f} | {rate / base_rate:.3f} | {ttft * 1000:.0f} | {(ttft - base_ttft) * 1000:+.0f} |",
            flush=True,
        )

    row("(a) AsyncLLM.generate", *base)

    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY * 2)
    paths = {
        "(b) load-balancing mode (HTTP)": ("http", "/ping", "/v1/completions"),
        "(c) queue mode (local endpoint, HTTP)": ("serve", "/v2/local/health", "/v2/local/openai/v1/completions"),
    }
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        for name, (command, ready_path, route) in paths.items():
            server = Server(command)
            try:
                await wait_ready(http, server, ready_path)
                row(name, *await measure(functools.partial(over_http, http, server.url + route), rounds))
            finally:
                server.stop()


def bare_boot() -> None:
    """The floor for a cold start: import vLLM, boot AsyncLLM with the
    worker's engine arguments for the embedded model on CPU, print 'ready'.
    It imports vLLM directly, not through handler.vllm_internals (which also
    imports vLLM's OpenAI app): a floor must not pay for the worker's imports."""
    from vllm.engine.arg_utils import AsyncEngineArgs  # bare floor: see the docstring
    from vllm.v1.engine.async_llm import AsyncLLM

    from handler.config import CPU_DEFAULTS, EMBEDDED_SERVED_NAME
    from handler.settings import Settings

    model = Settings.from_env().embedded_model_dir
    engine_args = AsyncEngineArgs(model=str(model), served_model_name=[EMBEDDED_SERVED_NAME], **CPU_DEFAULTS)
    llm = AsyncLLM.from_engine_args(engine_args)
    print("ready", flush=True)
    llm.shutdown()


def bare_cold_start() -> float:
    spawned = time.time()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--bare-boot"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.strip() == "ready":
            elapsed = time.time() - spawned
            break
    else:
        raise RuntimeError("the bare boot did not get ready")
    process.wait()
    return elapsed


async def lb_cold_start() -> dict[str, float]:
    import httpx

    server = Server("http")
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            marks = await wait_ready(http, server, "/ping")
        marks["ping_lag"] = marks.pop("at") - server.engine_ready_at()
        return marks
    finally:
        server.stop()


def cold_start(runs: int) -> None:
    lb: list[dict[str, float]] = []
    bare: list[float] = []
    for _ in range(runs):  # alternate, so that machine noise hits both alike
        lb.append(asyncio.run(lb_cold_start()))
        bare.append(bare_cold_start())

    def median(key: str) -> float:
        return statistics.median(run[key] for run in lb)

    print(f"\ncold start on the embedded model, median of {runs} runs, {os.cpu_count()} CPUs (seconds from spawn)")
    print("| process | first 204 on /ping | ready (first 200 on /ping) | /ping 200 after engine ready |")
    print("|---|---|---|---|")
    print(
        f"| load-balancing mode (python -m handler http) | {median('first_204'):.2f} | "
        f"{median('first_200'):.2f} | {median('ping_lag'):.3f} |"
    )
    print(f"| bare AsyncLLM boot | | {statistics.median(bare):.2f} | |")
    print(f"\nthe mode adds {median('first_200') - statistics.median(bare):+.2f} s to the bare boot")


def main(rounds: int, cold_runs: int) -> None:
    if cold_runs:
        cold_start(cold_runs)
    if rounds:
        asyncio.run(throughput(rounds))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds per path (0: skip)")
    parser.add_argument("--tokens", type=int, default=TOKENS, help="tokens generated per stream")
    parser.add_argument("--cold-runs", type=int, default=3, help="cold starts per process (0: skip)")
    parser.add_argument("--bare-boot", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    TOKENS = common.TOKENS = options.tokens  # direct() and round_of() read common's
    if options.bare_boot:
        bare_boot()
    else:
        main(options.rounds, options.cold_runs)
