"""The last unclear errors: native messages and sampling_params checked against
vLLM's own types, OpenAI bodies vLLM's validation would crash on, bad request
bodies at the local endpoint, UTF-8 split between stream chunks, and SIGTERM
while the engine boots."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import CAPITAL, GREEDY, job_error, native_text, run_job, serving
from fake_runpod import FakeRunPod, worker_env

from handler import jobs, native
from handler.endpoint import LocalEndpoint
from handler.errors import JobError
from handler.jobqueue import JobQueue
from handler.settings import Settings
from handler.streaming import event_data, sse_events

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOOL_TURN = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]


# -- streaming ---------------------------------------------------------------------


async def _chunks(chunks):
    for chunk in chunks:
        yield chunk


async def test_a_character_split_between_chunks_is_joined():
    payload = 'data: {"text": "é€😀 Paris"}\n\ndata: [DONE]\n\n'.encode()
    for cut in range(1, len(payload)):
        events = [e async for e in sse_events(_chunks([payload[:cut], payload[cut:]]))]
        assert event_data(events[0]) == {"text": "é€😀 Paris"}, cut
    one_byte_at_a_time = [payload[i : i + 1] for i in range(len(payload))]
    events = [e async for e in sse_events(_chunks(one_byte_at_a_time))]
    assert events == ['data: {"text": "é€😀 Paris"}\n\n', "data: [DONE]\n\n"]


async def test_bytes_that_are_not_utf8_do_not_fail_the_stream():
    events = [e async for e in sse_events(_chunks([b'data: {"text": "a\xffb"}\n\n', b"data: [DONE]\n\n"]))]
    assert event_data(events[0]) == {"text": "a\ufffdb"}


# -- native messages and sampling_params -------------------------------------------


@pytest.mark.parametrize(
    "job_input,says,param",
    [
        (
            {"messages": [{"role": 5, "content": "hi"}]},
            "input.messages[0].role: the role is a string",
            "messages[0].role",
        ),
        ({"messages": [{"role": None}]}, "input.messages[0].role", "messages[0].role"),
        ({"messages": [{"content": "hi"}]}, "input.messages[0].role: missing", "messages[0].role"),
        (
            {"messages": [CAPITAL[0], {"role": "user", "content": 5}]},
            "input.messages[1].content: Input should be a valid string",
            "messages[1].content",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": 12}]},
            "input.messages[0].tool_calls",
            "messages[0].tool_calls",
        ),
        ({"messages": ["What is the capital of France?"]}, "input.messages[0]: a message is an object", "messages[0]"),
        ({"messages": []}, "input.messages: the chat is empty", "messages"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]},
            "input.messages[0].content[0].text: Input should be a valid string",
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": "hi", "name": 7}]}, "input.messages[0].name", "messages[0].name"),
        (
            {"prompt": "hi", "sampling_params": {"structured_outputs": 5}},
            "input.sampling_params.structured_outputs",
            "sampling_params.structured_outputs",
        ),
        (
            {"prompt": "hi", "sampling_params": {"structured_outputs": {"choice": "yes"}}},
            "input.sampling_params.structured_outputs.choice: Input should be a valid list",
            "sampling_params.structured_outputs",
        ),
        (
            {"prompt": "hi", "sampling_params": {"structured_outputs": {"regex": "a", "choice": ["a"]}}},
            "only use one kind of structured outputs",
            "sampling_params.structured_outputs",
        ),
        (
            {"prompt": "hi", "sampling_params": {"extra_args": 12}},
            "input.sampling_params.extra_args: Input should be a valid dictionary",
            "sampling_params.extra_args",
        ),
        (
            {"prompt": "hi", "sampling_params": {"stop": [1, 2]}},
            "input.sampling_params.stop[0]",
            "sampling_params.stop",
        ),
        (
            {"prompt": "hi", "sampling_params": {"logit_bias": {"the": 1}}},
            "input.sampling_params.logit_bias.the",
            "sampling_params.logit_bias",
        ),
        (
            {"prompt": "hi", "sampling_params": {"max_tokens": 2.5}},
            "input.sampling_params.max_tokens",
            "sampling_params.max_tokens",
        ),
        ({"prompt": "caf\udce9"}, "input.prompt: the text holds a lone surrogate (\\udce9", "prompt"),
        (
            {"prompt": "hi", "sampling_params": {"stop": ["\ud800"]}},
            "input.sampling_params.stop[0]: the text holds a lone surrogate",
            "sampling_params.stop[0]",
        ),
    ],
)
async def test_bad_native_values_fail_with_400_naming_the_field(worker, job_input, says, param):
    error = job_error(await run_job(worker, job_input))
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert says in error["message"], error
    assert error["param"] == param


@pytest.mark.parametrize(
    "job_input",
    [
        {"messages": TOOL_TURN, "sampling_params": {"max_tokens": 4}},
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is the capital"},
                        {"type": "text", "text": " of France?"},
                    ],
                }
            ],
            "sampling_params": {"temperature": None, "max_tokens": 4, "logprobs": True, "seed": "7"},
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "narrator", "content": "Once upon a time"},
                {"role": "assistant", "content": "Yes?", "reasoning_content": "think"},
                CAPITAL[0],
            ],
            "sampling_params": {
                "max_tokens": 4,
                "structured_outputs": {"choice": ["Paris", "Lyon"]},
                "extra_args": {"a": 1},
            },
        },
        {
            "prompt": "1, 2, 3,",
            "sampling_params": {
                "max_tokens": 4,
                "stop": "\n",
                "logit_bias": {"28": -1.5},
                "stop_token_ids": [2],
                "n": 2,
                "seed": 1,
            },
            "stream": True,
        },
        # the ends of the integers vLLM's engine takes (msgpack's)
        {"prompt": "1, 2, 3,", "sampling_params": {"max_tokens": 2, "top_k": 2**64 - 1, "seed": -(2**63)}},
    ],
)
async def test_what_was_valid_stays_valid(worker, job_input):
    items = await run_job(worker, job_input)
    assert job_error(items) is None
    assert native_text(items)


def test_multimodal_parts_and_vllm_message_forms_pass_the_check():
    """The embedded model reads text only, so these are checked without the engine."""
    native.check_messages(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe these."},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
                    {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
                    {"type": "audio_url", "audio_url": {"url": "https://example.com/a.mp3"}},
                    {"type": "video_url", "video_url": {"url": "https://example.com/a.mp4"}},
                    {"type": "image_embeds", "image_embeds": "AAAA"},
                ],
            },
            {"role": "developer", "content": "Answer in French."},
            {"role": "function", "name": "f", "content": "42"},
            *TOOL_TURN,
        ]
    )


def test_job_inputs_too_deep_are_refused_without_recursion():
    nested: object = "x"
    for _ in range(100_000):  # far deeper than Python's stack
        nested = [nested]
    with pytest.raises(JobError) as raised:
        jobs.parse({"openai_route": "/v1/completions", "openai_input": {"prompt": nested}})
    assert raised.value.status == 400
    assert "input.openai_input.prompt" in raised.value.message and "deeper than 100 levels" in raised.value.message
    jobs.parse({"prompt": "x", "sampling_params": {"extra_args": {"a": [[[[["fine"]]]]]}}}, max_depth=8)


# -- OpenAI bodies vLLM's own validation crashes on ----------------------------------


def chat(**fields):
    return {
        "openai_route": "/v1/chat/completions",
        "openai_input": {"model": MODEL, "messages": CAPITAL, "max_tokens": 4, **fields},
    }


@pytest.mark.parametrize(
    "job_input,says",
    [
        (chat(structured_outputs=5), "input.openai_input.structured_outputs: vLLM cannot read a number here"),
        (chat(messages=None), "input.openai_input.messages: vLLM cannot read null here"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "text", "text": None}]}]),
            "input.openai_input.messages[0].content[0].text: Input should be a valid string",
        ),
        (
            {"route": "/v1/completions", "body": {"model": MODEL, "prompt": "hi", "structured_outputs": "json"}},
            "input.body.structured_outputs: vLLM cannot read a string here",
        ),
    ],
)
async def test_openai_values_vllm_would_crash_on_are_named(worker, job_input, says):
    error = job_error(await run_job(worker, job_input))
    assert error["code"] == 400
    assert says in error["message"], error


async def test_openai_errors_vllm_names_itself_stay_vllms(worker):
    error = job_error(await run_job(worker, chat(temperature="hot")))
    assert error["code"] == 400 and error["param"] == "body.temperature"  # vLLM's own answer


# -- the local endpoint's bodies -----------------------------------------------------

SMALL = Settings(max_run_bytes=2_000, max_runsync_bytes=4_000)
SHALLOW = Settings(max_json_depth=20)


@asynccontextmanager
async def endpoint(worker, settings: Settings):
    queue = JobQueue(worker.handle, 2)
    queue.start()
    try:
        async with serving(LocalEndpoint(queue, settings).app()) as url:
            async with httpx.AsyncClient(base_url=url, timeout=120) as http:
                yield http
    finally:
        await queue.stop()


def padded(size: int) -> bytes:
    """A valid /runsync body of exactly ``size`` bytes."""
    body = {"input": {"prompt": "1, 2, 3,", "sampling_params": {"max_tokens": 2}}, "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body)))
    return json.dumps(body).encode()


async def test_bodies_over_runpods_size_limits_get_413(worker):
    async with endpoint(worker, SMALL) as http:
        answer = await http.post("/v2/local/run", content=padded(2_001))
        assert answer.status_code == 413
        assert (
            answer.json()["error"]
            == "the request body is larger than 2000 bytes (RunPod's limit for /run: MAX_RUN_BYTES)"
        )
        answer = await http.post("/v2/local/runsync", content=padded(4_000))
        assert answer.status_code == 200 and answer.json()["status"] == "COMPLETED"
        answer = await http.post("/v2/local/runsync", content=padded(4_001))
        assert answer.status_code == 413 and "MAX_RUNSYNC_BYTES" in answer.json()["error"]

        async def chunked():  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b" " * 500

        answer = await http.post("/v2/local/run", content=chunked())
        assert answer.status_code == 413

        answer = await http.post("/openai/v1/chat/completions", content=b" " * 4_001)
        assert answer.status_code == 413
        assert answer.json()["error"]["code"] == 413 and "MAX_RUNSYNC_BYTES" in answer.json()["error"]["message"]


def test_the_default_limits_are_runpods():
    assert (Settings().max_run_bytes, Settings().max_runsync_bytes) == (10_000_000, 20_000_000)


async def test_bad_bodies_get_a_400_json_error_never_a_traceback(worker):
    deep_for_python = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep_for_the_limit = json.dumps({"input": {"prompt": "x", "sampling_params": {"extra_args": jobs_deep(25)}}})
    cases = {
        deep_for_python: "nests arrays and objects deeper than 20 levels",
        deep_for_the_limit.encode(): "nested deeper than 20 levels",
        b'{"input": {"prompt": "caf\xe9"}}': "not valid UTF-8 (byte 0xe9 at offset 25)",
        b'{"input": {"prompt": "x", "sampling_params": {"temperature": NaN}}}': "NaN is not a JSON value",
        b'{"input": {"prompt": "x"}, "policy": {"executionTimeout": "soon"}}': "policy.executionTimeout",
        b'{"input": {"prompt": "x"}, "policy": 5}': '"policy" must be an object',
        b'{"input": {"prompt": "x"}, "webhook": 5}': '"webhook" must be a URL string',
        # the message names a key that is not Unicode: it must still go out as UTF-8
        json.dumps({"input": {"\udda0": jobs_deep(25)}}).encode(): "body.input.\\udda0.a.a",
    }
    async with endpoint(worker, SHALLOW) as http:
        for body, says in cases.items():
            for route in ("/v2/local/run", "/v2/local/runsync"):
                answer = await http.post(route, content=body)
                assert answer.status_code == 400, (body[:60], answer.text[:200])
                assert says in answer.json()["error"], answer.text[:300]
                assert "Traceback" not in answer.text
        answer = await http.post("/openai/v1/completions", content=deep_for_python)
        assert answer.status_code == 400 and "deeper" in answer.json()["error"]["message"]
        answer = await http.post("/v2/local/runsync?wait=nan", content=padded(500))
        assert answer.status_code == 400 and "wait" in answer.json()["error"]


def jobs_deep(levels: int) -> object:
    value: object = "x"
    for _ in range(levels):
        value = {"a": value}
    return value


# -- SIGTERM while the engine boots ----------------------------------------------------


def _marked(marker: str) -> list[psutil.Process]:
    """Live processes that inherited the environment marker."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("RELIABILITY_TEST_MARKER") == marker and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


async def _none_outlive(marker: str) -> None:
    """Assert that no marked process is left 10 s after the worker ended
    (and kill any that is)."""
    deadline = time.monotonic() + 10
    while (left := _marked(marker)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    for process in left:
        process.kill()
    assert not left, f"vLLM processes outlived the worker: {left}"


@asynccontextmanager
async def booting(command: str, tmp_path: Path, env: dict[str, str]):
    """``python -m handler run`` with a job (the engine boots for it), or the
    production entrypoint under the runpod SDK with an empty queue (the engine
    builds at start, before any job)."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"input": {"messages": CAPITAL, "sampling_params": GREEDY}}))
    log = tmp_path / "worker.log"
    if command == "run":
        with log.open("w") as out:
            yield (
                subprocess.Popen(
                    [sys.executable, "-m", "handler", "run", "--input", str(job)],
                    cwd=ROOT,
                    env={**os.environ, **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        return
    async with serving(FakeRunPod().app()) as url:
        with log.open("w") as out:
            yield (
                subprocess.Popen(
                    [sys.executable, "-m", "handler"],
                    cwd=tmp_path,
                    env={**os.environ, "PYTHONPATH": str(ROOT), **worker_env(url), **env},
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )


@pytest.mark.parametrize("command", ["run", "production"])
async def test_sigterm_during_the_boot_leaves_no_vllm_process(tmp_path, command):
    marker = str(uuid.uuid4())
    async with booting(command, tmp_path, {"RELIABILITY_TEST_MARKER": marker}) as (worker, log):
        code = await _sigterm_mid_boot(worker, log, marker)
    # `run` fails its job. The queue worker, stopped before any job, ends its
    # SDK loop as asked (0) once the SDK has set its own SIGTERM handler, or
    # dies of the signal (-15) when it came before that
    assert code != 0 if command == "run" else code in (0, -signal.SIGTERM), code


async def test_a_failed_fitness_check_stops_the_worker_cleanly(tmp_path):
    """The runpod SDK's start-up fitness checks run in a subprocess beside the
    engine build (handler/fitness.py), and the SDK's own run exits with 1
    when they fail. Here the disk check cannot pass (it wants 100 % of "/"
    free): the worker must exit with the SDK's reason in its log, its build
    must stop before vLLM starts its engine process, and no vLLM process may
    outlive it."""
    marker = str(uuid.uuid4())
    env = {"RELIABILITY_TEST_MARKER": marker, "RUNPOD_MIN_DISK_PERCENT": "100"}
    async with booting("production", tmp_path, env) as (worker, log):
        try:
            code = await asyncio.to_thread(worker.wait, 240)
        finally:
            if worker.poll() is None:
                worker.kill()
    output = log.read_text(errors="replace")
    assert code == 1, output[-3000:]
    assert "Insufficient disk space" in output and "Worker is unhealthy" in output, output[-3000:]
    # the SDK's own run in the worker's process reports the subprocess's verdict
    assert "Fitness check failed: fitness_checks_in_a_subprocess | RuntimeError: in a subprocess: _disk_check" in output
    assert "EngineCore" not in output, "the build waits for the checks before vLLM starts its engine process"
    await _none_outlive(marker)


async def _sigterm_mid_boot(worker: subprocess.Popen, log: Path, marker: str) -> int:
    try:
        # wait until vLLM has spawned its engine process, and is loading
        deadline = time.monotonic() + 240
        while not any("EngineCore" in line for line in log.read_text(errors="replace").splitlines()):
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            await asyncio.sleep(0.2)
        spawned = psutil.Process(worker.pid).children(recursive=True)
        assert spawned, "vLLM has started its processes"
        worker.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(worker.wait, 60)
    finally:
        if worker.poll() is None:
            worker.kill()
    output = log.read_text(errors="replace")
    assert "engine ready" not in output and "[output]" not in output, "the signal came mid-boot"
    await _none_outlive(marker)
    assert "stopping" in output and "engine process" in output
    return code
