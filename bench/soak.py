"""Soak: the local endpoint under fuzzed inputs, a burst, faults and signals.

Everything goes over HTTP on loopback (127.0.0.1) to the local endpoint, and
the run is bounded in count and time; it prints one markdown table.

1. In this process, the local endpoint (the same LocalEndpoint, JobQueue,
   Worker and Engine that ``python -m handler serve`` builds) on a free port:
   - N fuzzed job inputs (tests/job_inputs.py: valid, half-valid, hostile) to
     ``/runsync``, 16 at a time: crashes, lost jobs and unclear errors;
   - a burst of short jobs to ``/run``, then polled until they are final;
   - cancels, client hang-ups (a streamed ``/openai/v1`` request whose client
     goes away) and ``executionTimeout``s of long jobs: the time from the
     fault until vLLM has no unfinished request.
2. ``python -m handler serve`` in a subprocess, three times:
   - SIGKILL of EngineCore under a running job: the job's error, the exit code
     and the time to exit, processes left behind;
   - SIGTERM under a running job; SIGTERM while the engine boots.
3. A fake ``HF_TOKEN`` and a local API key are set throughout; every log and
   every answer is searched for them.

    .venv/bin/python bench/soak.py                 # N=10000
    .venv/bin/python bench/soak.py --fuzz 2000 --burst 1000 --fuzz-minutes 15

Each phase is bounded: the fuzzing stops sending after ``--fuzz-minutes``,
the burst is polled for at most 10 minutes, each boot waited for at most 15.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import json
import logging
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

HOST = "127.0.0.1"  # loopback only
CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
LONG = {"prompt": "1,", "sampling_params": {"max_tokens": 3000, "ignore_eos": True}, "stream": True}
FUZZ_CONCURRENCY = 16
BOOT_LIMIT_S = 900  # a boot that takes longer ends the run
RAW_EXCEPTION = re.compile(r"^\s*('?\w+'? object |[A-Z]\w*(Error|Exception):)|Traceback")


def say(*parts: Any) -> None:
    print(*parts, file=PROGRESS, flush=True)


PROGRESS = sys.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@dataclass
class Report:
    path: Path  # the table so far, kept up to date in case the run is cut short
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # every answer, for the secret search

    def add(self, measure: str, target: str, result: str) -> None:
        self.rows.append((measure, target, result))
        say(f"  {measure}: {result}")
        self.path.write_text(self.table() + "\n")

    def table(self) -> str:
        lines = ["| measure | target | result |", "|---|---|---|"]
        lines += [f"| {m} | {t} | {r} |" for m, t, r in self.rows]
        return "\n".join(lines)


# -- fuzzed inputs -------------------------------------------------------------------


def fuzzed_inputs(count: int, seed: int) -> list[Any]:
    import job_inputs
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as fixed_seed

    drawn: list[Any] = []

    @fixed_seed(seed)
    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(job_inputs.job_inputs)
    def draw(job_input: Any) -> None:
        drawn.append(job_input)

    draw()
    return drawn[:count]


def clear_error(error: Any) -> bool:
    """A job error a client can act on: JSON with a message that is not a bare
    Python exception, and a 4xx code (only the input is at fault here)."""
    try:
        body = json.loads(error)["error"]
        message, code = body["message"], int(body["code"])
    except (TypeError, ValueError, KeyError):
        return False
    return bool(str(message).strip()) and not RAW_EXCEPTION.search(str(message)) and 400 <= code < 500


async def fuzz(http: Any, inputs: list[Any], deadline: float, report: Report) -> dict[str, int]:
    counts = {
        "completed": 0,
        "failed clearly": 0,
        "refused by the endpoint": 0,
        "crashes": 0,
        "lost": 0,
        "unclear": 0,
        "timed out": 0,
    }
    examples: dict[str, str] = {}
    pending = iter(enumerate(inputs))

    async def one(job_input: Any) -> None:
        body = json.dumps({"input": job_input, "policy": {"executionTimeout": 120_000}})
        try:
            answer = await http.post(
                "/v2/local/runsync?wait=150000", content=body, headers={"Content-Type": "application/json"}
            )
        except Exception as error:  # noqa: BLE001 - the endpoint did not answer
            counts["crashes"] += 1
            examples.setdefault("crash", f"{json.dumps(job_input)[:150]} -> {type(error).__name__}: {error}")
            return
        report.texts.append(answer.text)
        if answer.status_code >= 500:
            counts["crashes"] += 1
            examples.setdefault("crash", f"{json.dumps(job_input)[:150]} -> {answer.text[:200]}")
            return
        if answer.status_code >= 400:
            ok = isinstance(answer.json().get("error"), str) if _is_json(answer) else False
            counts["refused by the endpoint" if ok else "unclear"] += 1
            return
        view = answer.json()
        status = view.get("status")
        if status == "COMPLETED":
            counts["completed"] += 1
        elif status == "FAILED" and clear_error(view.get("error")):
            counts["failed clearly"] += 1
        elif status == "FAILED":
            counts["unclear"] += 1
            examples.setdefault("unclear", f"{json.dumps(job_input)[:150]} -> {str(view.get('error'))[:200]}")
        elif status == "TIMED_OUT":
            counts["timed out"] += 1
        else:
            counts["lost"] += 1
            examples.setdefault("lost", json.dumps(view)[:200])

    async def runner() -> None:
        for _, job_input in pending:
            if time.monotonic() > deadline:
                return
            await one(job_input)

    await asyncio.gather(*(runner() for _ in range(FUZZ_CONCURRENCY)))
    for kind, example in examples.items():
        say(f"  first {kind}: {example}")
    return counts


def _is_json(answer: Any) -> bool:
    try:
        answer.json()
        return True
    except ValueError:
        return False


async def burst(http: Any, count: int) -> tuple[int, int, float]:
    """(completed, lost, seconds) for ``count`` short jobs sent at once."""
    began = time.monotonic()
    body = {"input": {"prompt": "1, 2, 3,", "sampling_params": {"temperature": 0, "max_tokens": 4}}}
    sent = await asyncio.gather(*(http.post("/v2/local/run", json=body) for _ in range(count)))
    ids = [answer.json()["id"] for answer in sent if answer.status_code == 200]
    final: dict[str, str] = {}
    deadline = time.monotonic() + 600
    while len(final) < len(ids) and time.monotonic() < deadline:
        for job_id in [i for i in ids if i not in final][:200]:
            answer = await http.get(f"/v2/local/status/{job_id}")
            status = answer.json().get("status") if answer.status_code == 200 else "LOST"
            if status in ("COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT", "LOST"):
                final[job_id] = status
        await asyncio.sleep(0.2)
    completed = sum(1 for status in final.values() if status == "COMPLETED")
    lost = count - len(final) + sum(1 for status in final.values() if status == "LOST")
    return completed, lost, time.monotonic() - began


# -- faults ---------------------------------------------------------------------------


async def until_idle(engine: Any, since: float, limit: float = 10.0) -> float:
    """Seconds from ``since`` until vLLM has no unfinished request."""
    while engine.ready.llm.get_num_unfinished_requests():
        if time.monotonic() - since > limit:
            return float("inf")
        await asyncio.sleep(0.005)
    return time.monotonic() - since


async def generating(engine: Any) -> None:
    deadline = time.monotonic() + 120
    while not engine.ready.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)  # a few tokens in


async def cancel_idle(http: Any, engine: Any) -> float:
    job = (await http.post("/v2/local/run", json={"input": LONG})).json()
    await generating(engine)
    fault = time.monotonic()
    await http.post(f"/v2/local/cancel/{job['id']}")
    return await until_idle(engine, fault)


async def hang_up_idle(url: str, headers: dict[str, str], engine: Any) -> float:
    import httpx

    body = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "prompt": "1,",
        "max_tokens": 3000,
        "ignore_eos": True,
        "stream": True,
    }
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        async with client.stream("POST", "/v2/local/openai/v1/completions", json=body) as answer:
            chunks = 0
            async for _ in answer.aiter_raw():
                chunks += 1
                if chunks >= 3:
                    break
            fault = time.monotonic()
    # leaving the blocks closed the connection: the client is gone
    return await until_idle(engine, fault)


async def timeout_idle(http: Any, engine: Any, queue: Any) -> float:
    job = (await http.post("/v2/local/run", json={"input": LONG, "policy": {"executionTimeout": 1500}})).json()
    while (await http.get(f"/v2/local/status/{job['id']}")).json()["status"] != "TIMED_OUT":
        await asyncio.sleep(0.005)
    # from the moment the queue ended the job (this process's own clock)
    return await until_idle(engine, queue.get(job["id"]).finished)


def seconds(values: list[float]) -> str:
    if not values:
        return "not run"
    return f"max {max(values):.3f} s, median {statistics.median(values):.3f} s (n={len(values)})"


async def in_process(args: argparse.Namespace, report: Report, secret_env: dict[str, str]) -> None:
    import httpx
    import uvicorn

    from handler.endpoint import LocalEndpoint
    from handler.engine import Engine
    from handler.jobqueue import JobQueue
    from handler.settings import Settings
    from handler.worker import Worker

    os.environ.update(secret_env)
    fatal: list[str] = []
    settings = Settings.from_env()
    engine = Engine(settings, on_fatal=fatal.append)
    worker = Worker(engine)
    queue = JobQueue(worker.handle, worker.concurrency())
    queue.start()
    port = free_port()
    api_key = secret_env["LOCAL_API_KEY"]
    server = uvicorn.Server(
        uvicorn.Config(LocalEndpoint(queue, settings).app(api_key), host=HOST, port=port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    url = f"http://{HOST}:{port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    say(f"booting the engine for the local endpoint on {url} ...")
    try:
        await asyncio.wait_for(engine.start(), BOOT_LIMIT_S)
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=300) as http:
            say(f"drawing {args.fuzz} fuzzed inputs (seed {args.seed}) ...")
            inputs = fuzzed_inputs(args.fuzz, args.seed)
            say(f"sending them, {FUZZ_CONCURRENCY} at a time ...")
            start = time.monotonic()
            counts = await fuzz(http, inputs, start + args.fuzz_minutes * 60, report)
            ran = sum(counts.values())
            elapsed = time.monotonic() - start
            report.add(
                "fuzzed inputs sent",
                f"{args.fuzz}",
                f"{ran} in {elapsed:.0f} s" + ("" if ran == len(inputs) else " (stopped at the time limit)"),
            )
            report.add(
                "... completed / failed with a clear 4xx / refused by the endpoint (4xx)",
                "",
                f"{counts['completed']} / {counts['failed clearly']} / {counts['refused by the endpoint']}",
            )
            report.add("crashes (no answer, or a 5xx)", "0", str(counts["crashes"]))
            report.add("lost jobs (never final)", "0", str(counts["lost"] + counts["timed out"]))
            report.add("unclear errors (5xx for bad input, unparseable or empty)", "0", str(counts["unclear"]))

            say(f"burst of {args.burst} short jobs ...")
            completed, lost, took = await burst(http, args.burst)
            report.add(
                f"burst of {args.burst} short jobs",
                f"{args.burst} completed",
                f"{completed} completed, {lost} lost, in {took:.0f} s",
            )

            say("cancels, hang-ups and timeouts ...")
            cancels, hang_ups, timeouts = [], [], []
            for _ in range(args.faults):
                cancels.append(await cancel_idle(http, engine))
                hang_ups.append(await hang_up_idle(url, headers, engine))
                timeouts.append(await timeout_idle(http, engine, queue))
            report.add("engine idle after a cancel", "< 0.5 s", seconds(cancels))
            report.add("engine idle after a client hang-up", "< 0.5 s", seconds(hang_ups))
            report.add("engine idle after an executionTimeout", "< 0.5 s", seconds(timeouts))

            answer = (
                await http.post(
                    "/v2/local/runsync",
                    json={"input": {"messages": CAPITAL, "sampling_params": {"temperature": 0, "max_tokens": 32}}},
                )
            ).json()
            text = "".join(t for c in answer.get("output", [{}])[0].get("choices", []) for t in c["tokens"])
            report.add("answer after all that", "Paris", text or json.dumps(answer)[:80])
            report.add("engine failures reported", "0", str(len(fatal)))
    finally:
        server.should_exit = True
        await serving
        await queue.stop()
        await engine.shutdown()


# -- signals, in a python -m handler serve subprocess ---------------------------------


@dataclass
class Served:
    process: subprocess.Popen
    url: str
    log: Path
    marker: str


def start_served(directory: Path, name: str, secret_env: dict[str, str]) -> Served:
    port = free_port()
    marker = uuid.uuid4().hex
    log = directory / f"{name}.log"
    env = {**os.environ, **secret_env, "SOAK_MARKER": marker, "PYTHONPATH": str(ROOT)}
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "handler", "serve", "--host", HOST, "--port", str(port)],
            cwd=directory,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Served(process, f"http://{HOST}:{port}", log, marker)


def left_behind(marker: str) -> list[int]:
    import psutil

    pids = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("SOAK_MARKER") == marker and process.status() != psutil.STATUS_ZOMBIE:
                pids.append(process.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def stop(served: Served) -> list[int]:
    """Kill what is left (the run must stop by itself) and return those pids."""
    import psutil

    time.sleep(2)  # what a clean exit would have stopped is gone by now
    left = left_behind(served.marker)
    for pid in left:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    if served.process.poll() is None:
        served.process.kill()
    return left


async def ready(http: Any, served: Served) -> None:
    deadline = time.monotonic() + BOOT_LIMIT_S
    body = {"input": {"prompt": "1,", "sampling_params": {"max_tokens": 1}}}
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"the server exited: {served.log.read_text()[-2000:]}")
        try:
            answer = await http.post("/v2/local/runsync", json=body)
            if answer.json().get("status") == "COMPLETED":
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the server did not become ready")


async def running_long_job(http: Any) -> str:
    job = (await http.post("/v2/local/run", json={"input": LONG})).json()
    while (await http.get(f"/v2/local/status/{job['id']}")).json()["status"] != "IN_PROGRESS":
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    return job["id"]


async def exit_after(served: Served, since: float, limit: float = 60) -> tuple[int | None, float]:
    while served.process.poll() is None and time.monotonic() - since < limit:
        await asyncio.sleep(0.02)
    return served.process.poll(), time.monotonic() - since


def engine_core(served: Served) -> Any:
    import psutil

    for child in psutil.Process(served.process.pid).children():
        if "spawn_main" in " ".join(child.cmdline()) or "EngineCore" in child.name():
            return child
    raise RuntimeError("no EngineCore process found")


async def signals(directory: Path, report: Report, secret_env: dict[str, str]) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {secret_env['LOCAL_API_KEY']}"}

    say("python -m handler serve: SIGKILL of EngineCore under a running job ...")
    served = start_served(directory, "enginecore-kill", secret_env)
    try:
        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=60) as http:
            await ready(http, served)
            job = await running_long_job(http)
            engine_core(served).kill()
            fault = time.monotonic()
            error = None
            while served.process.poll() is None and error is None:
                try:
                    view = (await http.get(f"/v2/local/status/{job}")).json()
                    error = view.get("error") if view.get("status") == "FAILED" else None
                except Exception:  # noqa: BLE001 - the server is going down
                    break
                await asyncio.sleep(0.05)
            code, took = await exit_after(served, fault)
    finally:
        left = stop(served)
    reason = json.loads(error)["error"]["message"] if error and clear_error_json(error) else str(error)
    report.add("EngineCore SIGKILL: the running job", "fails with a reason", f"FAILED: {reason[:90]}")
    report.add("EngineCore SIGKILL: worker exit", "non-zero within 5 s", f"exit {code} after {took:.1f} s")
    report.add("EngineCore SIGKILL: processes left", "0", str(len(left)))
    report.texts.append(str(error))

    say("python -m handler serve: SIGTERM under a running job ...")
    served = start_served(directory, "sigterm", secret_env)
    try:
        async with httpx.AsyncClient(base_url=served.url, headers=headers, timeout=60) as http:
            await ready(http, served)
            await running_long_job(http)
            served.process.send_signal(signal.SIGTERM)
            code, took = await exit_after(served, time.monotonic())
    finally:
        left = stop(served)
    report.add(
        "SIGTERM while serving: exit, processes left",
        "exits, 0 left",
        f"exit {code} after {took:.1f} s, {len(left)} left",
    )

    say("python -m handler serve: SIGTERM while the engine boots ...")
    served = start_served(directory, "sigterm-boot", secret_env)
    try:
        deadline = time.monotonic() + BOOT_LIMIT_S
        while "EngineCore" not in served.log.read_text(errors="replace") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        served.process.send_signal(signal.SIGTERM)
        code, took = await exit_after(served, time.monotonic())
    finally:
        left = stop(served)
    report.add(
        "SIGTERM during the boot: exit, processes left",
        "exits, 0 left",
        f"exit {code} after {took:.1f} s, {len(left)} left",
    )


def clear_error_json(error: str) -> bool:
    try:
        return "message" in json.loads(error)["error"]
    except (TypeError, ValueError, KeyError):
        return False


# -- main -------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz", type=int, default=10_000, help="fuzzed inputs (default 10000)")
    parser.add_argument("--burst", type=int, default=1_000, help="short jobs sent at once (default 1000)")
    parser.add_argument("--faults", type=int, default=5, help="cancels, hang-ups and timeouts, each (default 5)")
    parser.add_argument("--seed", type=int, default=9, help="hypothesis seed for the fuzzed inputs")
    parser.add_argument(
        "--fuzz-minutes", type=float, default=30, help="the fuzzing stops sending after this long (default 30)"
    )
    args = parser.parse_args()

    global PROGRESS
    began = time.monotonic()
    secret_env = {"HF_TOKEN": "hf_" + secrets.token_hex(16), "LOCAL_API_KEY": "local-" + secrets.token_hex(16)}
    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    log = directory / "in-process.log"
    # this process's own output (and that of the engine processes it spawns)
    # goes to a log file that is searched for the secrets; progress and the
    # table go to the terminal
    terminal_out = os.fdopen(os.dup(1), "w")
    PROGRESS = os.fdopen(os.dup(2), "w")
    with log.open("w") as log_file:
        os.dup2(log_file.fileno(), 1)
        os.dup2(log_file.fileno(), 2)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faulthandler.enable()  # a crash in native code leaves its stack in the log
    report = Report(directory / "table.md")
    try:
        asyncio.run(in_process(args, report, secret_env))
        asyncio.run(signals(directory, report, secret_env))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        found = 0
        for path in directory.glob("*.log"):
            text = path.read_text(errors="replace")
            found += sum(text.count(value) for value in secret_env.values())
        found += sum(text.count(value) for text in report.texts for value in secret_env.values())
        report.add("secrets (HF_TOKEN, the local API key) in logs and answers", "0", str(found))
        report.add("total time", "", f"{(time.monotonic() - began) / 60:.1f} min")
        print(report.table(), file=terminal_out, flush=True)
        say(f"logs: {directory}")
    from handler.__main__ import exit_cleanly

    exit_cleanly(0)


if __name__ == "__main__":
    main()
