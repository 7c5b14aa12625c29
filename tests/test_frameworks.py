"""Agent frameworks against the worker, as their users run them.

The frameworks run in their own virtual environment, ``.venv-clients``
(tests/clients/requirements.txt; builder/setup_tool_venv.sh makes it, and
``make test`` runs that), one subprocess per framework, all at once, each
reaching the session's engine over HTTP only: through the local endpoint's ``/v2/<id>/openai/v1`` (RunPod's
queue, as ``make serve``) and load-balancing mode's ``/v1`` (as ``make
http``). The engine runs with the worker's defaults: no parser and no chat
template set, so the tool-call parser is the one chosen from the embedded
model's template. tests/clients/frameworks.py makes the calls and prints what
each returned; the tests below check it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import MODEL, serving

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "tests" / "clients"
CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
sys.path.insert(0, str(CLIENTS))
from frameworks import FRAMEWORKS  # noqa: E402

MODES = ("local endpoint", "load balancing")
ENDS = {"local endpoint": "/v2/local/openai/v1", "load balancing": "/v1"}


@pytest.fixture(scope="module")
async def base_urls(engine, worker):
    from handler.endpoint import LocalEndpoint
    from handler.jobqueue import JobQueue
    from handler.load_balancing import Front

    queue = JobQueue(worker.handle, worker.concurrency())
    queue.start()
    try:
        async with serving(LocalEndpoint(queue).app(None)) as local, serving(Front(engine.settings, engine)) as lb:
            yield {"local endpoint": local + ENDS["local endpoint"], "load balancing": lb + ENDS["load balancing"]}
    finally:
        await queue.stop()


@pytest.fixture(scope="module")
def clients_python() -> Path:
    if not CLIENTS_PYTHON.exists():
        reason = f"{CLIENTS_PYTHON} is missing: `make clients` (which `make test` runs) sets it up"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CLIENTS_PYTHON


@pytest.fixture(scope="module")
async def results(base_urls: dict[str, str], clients_python: Path) -> dict[str, Any]:
    """Each framework's calls through both endpoints, by mode: one subprocess
    per framework, all at once (the engine batches their requests); a
    framework whose run failed holds its exception."""
    urls = [base_urls[mode] for mode in MODES]
    runs = [client_calls(clients_python, framework, urls) for framework in FRAMEWORKS]
    return dict(zip(FRAMEWORKS, await asyncio.gather(*runs, return_exceptions=True), strict=True))


def calls_of(results: dict[str, Any], framework: str, mode: str) -> dict[str, Any]:
    result = results[framework]
    if isinstance(result, BaseException):
        raise result
    return result[mode]


async def client_calls(python: Path, framework: str, urls: list[str]) -> dict[str, dict[str, Any]]:
    environ = {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    process = await asyncio.create_subprocess_exec(
        str(python),
        str(CLIENTS / "frameworks.py"),
        framework,
        MODEL,
        *urls,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environ,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=1200)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    by_mode = {
        mode: {line["call"]: line for line in lines if line["base_url"] == url}
        for mode, url in zip(MODES, urls, strict=True)
    }
    expected = list(FRAMEWORKS[framework].calls)
    assert process.returncode == 0 and all(list(calls) == expected for calls in by_mode.values()), (
        f"{framework} exited {process.returncode} after {[list(calls) for calls in by_mode.values()]}:\n"
        + stderr.decode()[-4000:]
    )
    return by_mode


def value(calls: dict[str, Any], call: str) -> Any:
    line = calls[call]
    assert line["ok"], f"{call}: {line['error']}\n{line['trace']}"
    return line["value"]


def assert_city(returned: Any) -> None:
    """The framework's own pydantic object, whose fields the schema held."""
    assert returned["type"] == "City", returned
    assert set(returned["fields"]) == {"name", "country"}
    assert all(isinstance(field, str) and field for field in returned["fields"].values()), returned


def assert_paris(answer: Any) -> None:
    assert isinstance(answer, str) and "Paris" in answer, answer


def assert_streamed_paris(calls: Any, whole: str) -> None:
    """The ``whole`` answer names Paris, and the ``stream`` call gave the same
    text in more than three non-empty pieces."""
    answer = value(calls, whole)
    assert_paris(answer)
    pieces = value(calls, "stream")
    assert "".join(pieces) == answer and len([piece for piece in pieces if piece]) > 3, pieces


@pytest.mark.parametrize("mode", MODES)
def test_autogen(results, mode):
    calls = calls_of(results, "autogen", mode)
    assert_paris(value(calls, "plain")["content"])
    forced = value(calls, "forced_tool")
    [call] = forced["content"]
    assert call["type"] == "FunctionCall" and call["fields"]["name"] == "get_weather"
    assert json.loads(call["fields"]["arguments"]) == {"city": "Paris"}
    messages = value(calls, "agent_tool")
    assert [message["type"] for message in messages] == [
        "TextMessage",
        "ToolCallRequestEvent",
        "ToolCallExecutionEvent",
        "ToolCallSummaryMessage",
    ]
    assert messages[-1]["content"] == "sunny in Paris", "the agent ran the tool with the model's arguments"


@pytest.mark.parametrize("mode", MODES)
def test_langchain(results, mode):
    calls = calls_of(results, "langchain", mode)
    assert_streamed_paris(calls, "invoke")
    bound = value(calls, "bind_tools")
    assert [(call["name"], call["args"]) for call in bound["tool_calls"]] == [("get_weather", {"city": "Paris"})]
    assert_city(value(calls, "structured_json_schema"))
    assert_city(value(calls, "structured_function_calling"))


@pytest.mark.parametrize("mode", MODES)
def test_instructor(results, mode):
    calls = calls_of(results, "instructor", mode)
    assert_city(value(calls, "tools"))
    assert_city(value(calls, "json_schema"))


@pytest.mark.parametrize("mode", MODES)
def test_openai_agents(results, mode):
    calls = calls_of(results, "openai_agents", mode)
    for model in ("chat_completions", "responses"):
        assert_paris(value(calls, model))
        with_tool = value(calls, f"{model}_tool")
        assert with_tool["final_output"] == "sunny in Paris", "the agent ran the tool with the model's arguments"
        [call] = with_tool["calls"]
        assert call["type"] == "ResponseFunctionToolCall" and call["fields"]["name"] == "get_weather"
        assert json.loads(call["fields"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("mode", MODES)
def test_pydantic_ai(results, mode):
    calls = calls_of(results, "pydantic_ai", mode)
    assert_paris(value(calls, "text"))
    assert_city(value(calls, "structured"))


@pytest.mark.parametrize("mode", MODES)
def test_litellm(results, mode):
    calls = calls_of(results, "litellm", mode)
    assert_streamed_paris(calls, "completion")


# --- the "Works with" table (docs/tools.md) ----------------------------------------------


def pins() -> dict[str, str]:
    text = (CLIENTS / "requirements.txt").read_text()
    return {name: version for name, version in re.findall(r"^([\w-]+)(?:\[\w+\])?==(\S+)", text, re.MULTILINE)}


def works_with_table() -> str:
    """The docs' table, from the frameworks the suite runs and their pins."""
    rows = ["| framework | version tested | what works, tools included | point it at RunPod |", "|---|---|---|---|"]
    versions = pins()
    for framework in FRAMEWORKS.values():
        works = "; ".join(framework.calls.values())
        version = f"`{framework.package}` {versions[framework.package]}"
        rows.append(f"| {framework.name} | {version} | {works} | `{framework.snippet}` |")
    return "\n".join(rows)


def test_the_docs_list_the_frameworks_the_suite_runs():
    page = (ROOT / "docs" / "tools.md").read_text()
    assert works_with_table() in page, (
        "regenerate docs/tools.md's Works with table: .venv/bin/python -c "
        "\"import sys; sys.path[:0] = ['tests']; from test_frameworks import works_with_table; print(works_with_table())\""
    )


def test_every_framework_is_pinned_and_tested_in_both_modes():
    assert {framework.package for framework in FRAMEWORKS.values()} <= set(pins())
    tested = {name.removeprefix("test_") for name in globals() if name.startswith("test_")}
    assert set(FRAMEWORKS) <= tested
