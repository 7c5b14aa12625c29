"""One real engine (vLLM on the embedded SmolLM2 model) for the whole session."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from contextlib import asynccontextmanager
from typing import Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import uvicorn  # noqa: E402

from handler.engine import Engine  # noqa: E402
from handler.settings import Settings  # noqa: E402
from handler.worker import Worker  # noqa: E402

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 32}


@pytest.fixture(scope="session")
def fatal_reports() -> list[str]:
    return []


@pytest.fixture(scope="session")
async def engine(fatal_reports: list[str]):
    engine = Engine(Settings.from_env(), on_fatal=fatal_reports.append)
    await engine.start()
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="session")
def worker(engine: Engine) -> Worker:
    return Worker(engine)


async def run_job(worker: Worker, job_input: Any, job_id: str = "test") -> list[Any]:
    """Every item the handler yields for one job."""
    return [item async for item in worker.handle({"id": job_id, "input": job_input})]


def job_error(items: list[Any]) -> dict[str, Any] | None:
    """The parsed error object of a failed job, or None."""
    for item in items:
        if isinstance(item, dict) and "error" in item:
            return json.loads(item["error"])["error"]
    return None


def native_text(items: list[Any], index: int = 0) -> str:
    return "".join(
        token
        for item in items
        for choice in item["choices"]
        if choice["index"] == index
        for token in choice["tokens"]
    )


@asynccontextmanager
async def serving(app):
    """Serve an ASGI app on a free loopback port in this event loop."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported and cleaned up, as
    ``python -m handler`` does (``exit_cleanly``): interpreter teardown would
    only print native extensions' "leaked" reports after the summary."""
    from handler.__main__ import exit_cleanly

    exit_cleanly(_exit_status)
