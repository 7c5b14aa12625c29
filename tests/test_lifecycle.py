"""Start-up, boot failure and engine death."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from conftest import CAPITAL, GREEDY, job_error, run_job

from handler.engine import Engine
from handler.settings import Settings
from handler.worker import Worker

ROOT = Path(__file__).resolve().parent.parent


def run_handler(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "handler", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_run_ends_with_the_answer():
    """`make run` (``handler run``), as a terminal shows it, stdout and stderr
    together: vLLM logs its shutdown before the answer, which is the last line."""
    result = subprocess.run(
        [sys.executable, "-m", "handler", "run"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lines = result.stdout.strip().splitlines()
    assert any("[shutdown]" in line for line in lines), "vLLM's shutdown log is shown, not hidden"
    assert lines[-1].startswith('[output] {"status": "COMPLETED"'), lines[-5:]
    assert "Paris" in lines[-1]


def test_bad_setting_stops_startup_with_one_line():
    result = run_handler("run", env={"MAX_MODEL_LEN": "abc"})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("configuration error: MAX_MODEL_LEN='abc' is not valid")
    assert "integer" in last


def test_production_entrypoint_checks_settings_before_serving():
    result = run_handler(env={"ENFORCE_EAGER": "maybe"})
    assert result.returncode == 2
    assert "ENFORCE_EAGER='maybe' is not a boolean" in result.stderr.strip().splitlines()[-1]
    result = run_handler(env={"MAX_CONCURRENCY": "0"})
    assert result.returncode == 2
    assert "MAX_CONCURRENCY='0' is not valid" in result.stderr


def test_missing_model_fails_the_job_readably_and_exits_non_zero(tmp_path):
    job = tmp_path / "job.json"
    job.write_text('{"input": {"prompt": "hi"}}')
    secret = "hf_topsecretvalue123"
    result = run_handler(
        "run", "--input", str(job), env={"MODEL_NAME": str(tmp_path / "no-such-model"), "HF_TOKEN": secret}
    )
    assert result.returncode == 1
    assert result.stdout.strip().splitlines()[-1].startswith("[error]")
    assert "no-such-model" in result.stdout
    assert secret not in result.stdout + result.stderr
    assert "'hf_token': '***'" in result.stderr


async def test_boot_failure_reaches_every_waiting_job_once(tmp_path, caplog):
    reports: list[str] = []
    settings = Settings(fatal_exit_delay_s=0)
    engine = Engine(settings, environ={"MODEL_NAME": str(tmp_path / "missing")}, on_fatal=reports.append)
    worker = Worker(engine)
    with caplog.at_level(logging.INFO, logger="handler.engine"):
        results = await asyncio.gather(*(run_job(worker, {"prompt": "hi"}) for _ in range(3)))
    errors = [job_error(items) for items in results]
    assert all(e and e["code"] == 503 and "missing" in e["message"] for e in errors), errors
    assert caplog.text.count("engine configuration") == 1, "one boot, not three"
    await asyncio.sleep(0.05)
    assert len(reports) == 1 and "failed to start" in reports[0]
    # later jobs get the same answer at once, without a new boot
    assert job_error(await run_job(worker, {"prompt": "hi"}))["code"] == 503


async def test_engine_death_fails_jobs_and_reports_fatal():
    reports: list[str] = []
    engine = Engine(Settings(fatal_exit_delay_s=0), on_fatal=reports.append)
    worker = Worker(engine)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    assert job_error(await run_job(worker, {"messages": CAPITAL, "sampling_params": GREEDY})) is None
    spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert spawned
    try:
        for process in spawned:
            process.send_signal(signal.SIGKILL)
        deadline = asyncio.get_running_loop().time() + 10
        while not reports and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert reports and "died" in reports[0]
        error = job_error(await run_job(worker, {"messages": CAPITAL, "sampling_params": GREEDY}))
        assert error["code"] == 503 and "died" in error["message"]
    finally:
        await engine.shutdown()


def test_tensor_parallel_that_cannot_split_the_heads_stops_startup():
    result = run_handler("run", env={"TENSOR_PARALLEL_SIZE": "2"})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "TENSOR_PARALLEL_SIZE=2 does not divide the model's 9 attention heads" in last


def test_plan_command_on_the_embedded_model():
    model_dir = Settings.from_env().embedded_model_dir
    result = run_handler("plan", str(model_dir), "--max-model-len", "4096", env={})
    assert result.returncode == 0, result.stderr
    assert "Recommended: 1 x 24 GB (L4, A5000, 3090), TENSOR_PARALLEL_SIZE=1, $0.68/hour" in result.stdout
    assert "KV cache: 22.5 KiB/token" in result.stdout
    # the CUDA-graph sizes, from vLLM's own config code, for the worker's cap (MAX_CONCURRENCY 30)
    from handler import vllm_internals as vi

    capped, uncapped = vi.capture_sizes(30, 2048), vi.capture_sizes(256, 2048)
    assert capped == sorted(set(capped)) and 30 in capped and capped[-1] <= 60 < uncapped[-1], (capped, uncapped)
    assert f"vLLM captures {len(capped)} batch sizes at boot:\n  {', '.join(map(str, capped))}." in result.stdout
    assert f"it captures {len(uncapped)}, up to {uncapped[-1]}" in result.stdout
    result = run_handler("plan", "no-such-org/no-such-model", env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "pass a local model directory" in result.stderr


async def test_the_engine_is_sized_for_the_endpoint_and_one_process_runs_the_model(worker):
    """The session engine: ``max_num_seqs`` capped at MAX_CONCURRENCY (30),
    yet a job asking for more sequences than that still gets them all (the
    rest wait for a slot in vLLM's scheduler); and on the CPU the model runs
    inside EngineCore's process (vLLM's single-process executor), so
    EngineCore starts no model-worker process of its own, and EngineCore
    was forked, not spawned."""
    ready = worker.engine.ready
    assert ready.args.max_num_seqs == worker.settings.max_concurrency == 30
    body = {"model": ready.served_model, "prompt": "1, 2, 3,", "n": 31, "max_tokens": 2, "temperature": 1}
    items = await run_job(worker, {"openai_route": "/v1/completions", "openai_input": body})
    assert job_error(items) is None, items
    assert sorted(choice["index"] for choice in items[0]["choices"]) == list(range(31))

    engine_cores = [p for p in psutil.Process().children(recursive=True) if "EngineCore" in " ".join(p.cmdline())]
    assert len(engine_cores) == 1, engine_cores
    assert engine_cores[0].children() == [], "no separate model-worker process"
    # ... and forked: a forked process keeps the environment block this one
    # was started with, while a spawned one gets the environment of the
    # moment, in which the build had set VLLM_ENABLE_V1_MULTIPROCESSING
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in psutil.Process().environ(), "set by the build, not by the test"
    assert "VLLM_ENABLE_V1_MULTIPROCESSING" not in engine_cores[0].environ(), "EngineCore was spawned"
    assert os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "fork", "set back after vLLM's CPU configuration"


def test_boot_marks_count_from_the_process_start():
    """``since_process_start`` reads the process's start from /proc to 10 ms;
    psutil's figure rounds the boot time to whole seconds, so the two agree
    within a second, and the exact one is never later than psutil's."""
    from handler.engine import since_process_start

    exact = since_process_start()
    rounded = time.time() - psutil.Process().create_time()
    assert 0 < exact <= rounded + 0.05 and rounded - exact < 1.0, (exact, rounded)
