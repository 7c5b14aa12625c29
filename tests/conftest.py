"""One real engine (vLLM on the embedded SmolLM2 model) for the whole session."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import uvicorn  # noqa: E402

from handler.settings import Settings  # noqa: E402

if TYPE_CHECKING:  # vLLM is imported only by the tests that boot the engine
    from handler.engine import Engine
    from handler.worker import Worker

# Fixtures that boot the engine: `make test-fast` (pytest --fast) deselects the
# tests that use them, and those marked `vllm`.
ENGINE_FIXTURES = {"engine", "worker", "lora_adapter"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", help="only tests that need no engine and no vLLM")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    keep, drop = [], []
    for item in items:
        slow = item.get_closest_marker("vllm") or ENGINE_FIXTURES & set(getattr(item, "fixturenames", ()))
        (drop if slow else keep).append(item)
    items[:] = keep
    config.hook.pytest_deselected(items=drop)


CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "max_tokens": 32}
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The session's engine also serves a LoRA adapter (made by ``lora_adapter``)
# under this name (test_lora.py). Tool calling is the worker's default for the
# embedded model (test_tool_calling.py, test_frameworks.py): no env var sets it.
LORA_NAME = "smollm2-test-lora"
TOOL_TEMPLATE = Path(__file__).resolve().parent.parent / "handler" / "smollm2_tool_chat_template.jinja"


@pytest.fixture(scope="session")
def fatal_reports() -> list[str]:
    return []


def make_lora_adapter(model_dir: Path, target: Path) -> Path:
    """A rank-4 LoRA adapter on q_proj/v_proj of the model in ``model_dir``,
    saved with peft's ``save_pretrained``. Seeded random weights, B included
    (peft's default B is zero, which would change nothing), so that greedy
    output differs from the base model's (lora_alpha 12: a scale at which
    the answer changes but stays words)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=12, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from handler import embedded_model

    model_dir = embedded_model.prepare(Settings.from_env().embedded_model_dir, progress=False)
    return make_lora_adapter(model_dir, tmp_path_factory.mktemp("lora") / LORA_NAME)


def engine_environ(lora_adapter: Path) -> dict[str, str]:
    """The process environment plus LoRA, set as a user would set it
    (worker-vllm's LORA_MODULES form)."""
    return {
        **os.environ,
        "ENABLE_LORA": "true",
        "LORA_MODULES": json.dumps([{"name": LORA_NAME, "path": str(lora_adapter)}]),
    }


@pytest.fixture(scope="session")
async def engine(fatal_reports: list[str], lora_adapter: Path):
    from handler.engine import Engine

    environ = engine_environ(lora_adapter)
    engine = Engine(Settings.from_env(environ), environ=environ, on_fatal=fatal_reports.append)
    await engine.start()
    yield engine
    await engine.shutdown()


@pytest.fixture(scope="session")
def worker(engine: Engine) -> Worker:
    from handler.worker import Worker

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
        token for item in items for choice in item["choices"] if choice["index"] == index for token in choice["tokens"]
    )


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def chromium() -> str | None:
    for candidate in (
        os.environ.get("CHROMIUM"),
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
async def browser():
    """Headless Chromium (Debian's chromium, driven by playwright), for the
    playground's and the documentation site's tests."""
    path = chromium()
    if path is None:
        reason = "no Chromium found: install Debian's chromium (apt-get install chromium) or set CHROMIUM"
        if os.environ.get("CI") == "true":  # .ci/run installs it: a missing one is a failure there
            pytest.fail(reason)
        print(f"skipping the browser tests: {reason}")
        pytest.skip(reason)
    async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")
    async_api.expect.set_options(timeout=60_000)
    async with async_api.async_playwright() as driver:
        browser = await driver.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield browser
        await browser.close()


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
    if session.config.getoption("--fast") and "vllm" in sys.modules:
        print("\n--fast: a test imported vLLM; mark it @pytest.mark.vllm or keep it out of FAST_TESTS", file=sys.stderr)
        _exit_status = _exit_status or 1


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process once pytest has reported and cleaned up, as
    ``python -m handler`` does (``exit_cleanly``): interpreter teardown would
    only print native extensions' "leaked" reports after the summary."""
    from handler.__main__ import exit_cleanly

    exit_cleanly(_exit_status)
