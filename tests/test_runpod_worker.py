"""The production entrypoint (`python -m handler`) under the real runpod SDK's
job loop, against a stand-in for RunPod's job API on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import CAPITAL, GREEDY, native_text, serving
from fake_runpod import FakeRunPod, worker_env
from runpod.serverless.modules.worker_state import Job

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


async def wait_for(predicate, timeout: float, log: Path) -> None:
    """Poll until ``predicate()``; fail after ``timeout`` seconds, showing the
    end of the worker's log."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
            pytest.fail(f"timed out after {timeout} s; the worker's log ends:\n{tail}")
        await asyncio.sleep(0.1)


def leave_a_job_in_progress(directory: Path) -> None:
    """What a worker killed mid-job leaves behind: the runpod SDK's record of
    its jobs in progress, in the working directory."""
    with (directory / ".runpod_jobs.pkl").open("wb") as state:
        pickle.dump({Job(id="lost-in-a-crash")}, state)


async def test_production_entrypoint_serves_runpod_jobs(tmp_path):
    platform = FakeRunPod()
    log = tmp_path / "worker.log"
    leave_a_job_in_progress(tmp_path)
    async with serving(platform.app()) as url:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            **worker_env(url),
            "MAX_CONCURRENCY": "4",
            "STREAM_BATCH_MAX_EVENTS": "4",
        }
        platform.queue += [
            {"id": "native", "input": {"messages": CAPITAL, "sampling_params": GREEDY, "stream": True}},
            {
                "id": "openai",
                "input": {
                    "openai_route": "/v1/chat/completions",
                    "openai_input": {"model": MODEL, "messages": CAPITAL, "temperature": 0, "max_tokens": 32},
                },
            },
            {"id": "bad", "input": {"prompt": 5}},
            {
                "id": "long",
                "input": {"prompt": "1,", "sampling_params": {"max_tokens": 4000, "ignore_eos": True}, "stream": True},
            },
        ]
        with log.open("w") as log_file:  # a file, not a pipe: the SDK logs a lot
            worker = subprocess.Popen(
                [sys.executable, "-m", "handler"], cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            await wait_for(lambda: {"native", "openai", "bad"} <= set(platform.done), 240, log)
            await wait_for(lambda: len(platform.streamed.get("long", [])) >= 2, 60, log)
            platform.stop.append("long")  # RunPod's per-job stop (a cancel or a timeout)
            await asyncio.sleep(2)
            seen = len(platform.streamed["long"])
            await asyncio.sleep(2)
            assert len(platform.streamed["long"]) == seen, "the stopped job streams no more"
            assert "long" not in platform.done
            platform.queue.append(
                {"id": "after", "input": {"prompt": "1, 2, 3,", "sampling_params": {"temperature": 0, "max_tokens": 8}}}
            )
            await wait_for(lambda: "after" in platform.done, 60, log)
        finally:
            engine_processes = psutil.Process(worker.pid).children(recursive=True)
            worker.send_signal(signal.SIGTERM)  # how RunPod stops a worker
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            _, alive = psutil.wait_procs(engine_processes, timeout=15)
            for process in alive:
                process.kill()
    output = log.read_text()
    assert engine_processes and not alive, f"vLLM processes outlived the worker: {alive}"

    native = platform.done["native"]
    streamed = [post["output"] for post in platform.streamed["native"]]
    assert len(streamed) >= 2 and native["output"] == streamed, "output aggregates the stream"
    assert "Paris" in native_text(streamed)
    [answer] = platform.done["openai"]["output"]
    assert "Paris" in answer["choices"][0]["message"]["content"]
    error = json.loads(platform.done["bad"]["error"])["error"]
    assert error["code"] == 400 and "input.prompt" in error["message"]
    assert native_text(platform.done["after"]["output"]).startswith(" 4, 5")
    assert "Traceback" not in output
    assert "forgetting 1 job(s) left in progress by an earlier worker process: lost-in-a-crash" in output
    # on the CPU the engine build started before the runpod SDK was set up
    # (its clean-up of old jobs is logged then), and the first job took that
    # build over: one build, one configuration line
    assert output.count("engine configuration (vLLM") == 1, output.count("engine configuration (vLLM")
    assert output.index("engine configuration (vLLM") < output.index("forgetting 1 job(s)")
    # the worker's own INFO lines survive vLLM's app build (vi.build_app)
    assert "handler.engine: engine ready in" in output
    # the SDK's asyncio.run made a uvloop loop, as vllm serve runs on (handler/event_loop.py)
    assert "(event loop: uvloop.Loop)" in output
    # the SDK's fitness checks ran in a subprocess (handler/fitness.py: its
    # three system checks; a GPU adds the CUDA ones), and the SDK's own run
    # in this process ran just the one check that reports that verdict
    assert "Running 3 fitness check(s)" in output and "Running 1 fitness check(s)" in output, output[:3000]
    assert output.count("All fitness checks passed") == 2


async def test_sigterm_after_a_job_ends_the_worker_without_a_traceback(tmp_path):
    """RunPod stops an idle worker with SIGTERM. The app's lifespan is left
    in the event loop before the runpod SDK's loop ends; left open, the
    loop's teardown closes it mid-flight and logs a traceback (it did once
    the engine stopped fast enough for the loop to end before the worker's
    own exit)."""
    platform = FakeRunPod()
    platform.queue.append({"id": "one", "input": {"prompt": "1, 2,", "sampling_params": GREEDY, "stream": True}})
    log = tmp_path / "worker.log"
    async with serving(platform.app()) as url:
        env = {**os.environ, "PYTHONPATH": str(ROOT), **worker_env(url)}
        with log.open("w") as log_file:
            worker = subprocess.Popen(
                [sys.executable, "-m", "handler"], cwd=tmp_path, env=env, stdout=log_file, stderr=subprocess.STDOUT
            )
        try:
            await wait_for(lambda: "one" in platform.done, 240, log)
            engine_processes = psutil.Process(worker.pid).children(recursive=True)
            worker.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(worker.wait, 30)
        finally:
            if worker.poll() is None:
                worker.kill()
    _, alive = psutil.wait_procs(engine_processes, timeout=15)
    output = log.read_text()
    assert not alive, f"vLLM processes outlived the worker: {alive}"
    assert code == 0, output[-3000:]
    assert "Traceback" not in output and "error occurred during closing" not in output, output[-3000:]
