"""Load-balancing mode: vLLM's OpenAI app over real HTTP, behind /ping.

Most checks serve ``Front`` over the session's engine on loopback; the ones
about the process itself (/ping from start, engine death, SIGTERM) run
``python -m handler http`` in a subprocess.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from conftest import CAPITAL, LORA_NAME, serving

from handler.errors import ConfigError
from handler.load_balancing import Front, Listen, listen_address
from handler.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LONG = {"model": MODEL, "messages": CAPITAL, "max_tokens": 4000, "ignore_eos": True}


@pytest.fixture(scope="module")
async def url(engine):
    async with serving(Front(engine.settings, engine)) as base:
        yield base


async def no_running_request(engine, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while engine.ready.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return engine.ready.llm.get_num_unfinished_requests() == 0


async def until_running(engine, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not engine.ready.llm.get_num_unfinished_requests():
        assert time.monotonic() < deadline, "the request never reached vLLM"
        await asyncio.sleep(0.02)


async def test_openai_sdk_chat_plain_and_streamed(url):
    sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    answer = await sdk.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=32)
    assert answer.choices[0].message.content == "The capital of France is Paris."

    pieces = []
    stream = await sdk.chat.completions.create(model=MODEL, messages=CAPITAL, temperature=0, max_tokens=32, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == answer.choices[0].message.content
    assert len(pieces) > 3, "a real SSE stream, token by token"

    assert [m.id for m in (await sdk.models.list()).data] == [MODEL, LORA_NAME]
    with pytest.raises(openai.NotFoundError) as raised:  # vLLM's own status and message
        await sdk.chat.completions.create(model="gpt-4", messages=CAPITAL)
    assert "gpt-4" in raised.value.message


async def test_ping_and_vllms_other_routes(url):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        ping = await http.get("/ping")
        assert ping.status_code == 200
        assert (await http.get("/health")).status_code == 200  # vLLM's own route
        tokens = (await http.post("/tokenize", json={"model": MODEL, "prompt": "Hello"})).json()
        assert tokens["count"] >= 1


async def test_bad_json_gets_a_4xx_with_vllms_error(url):
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post(
            "/v1/chat/completions",
            content=b'{"model": "x", "messages": [',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 400
        assert response.json()["error"]["code"] == 400
        response = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": "hi"})
        assert 400 <= response.status_code < 500


async def test_client_disconnect_aborts_the_generation(url, engine):
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        async with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            for _ in range(5):
                await anext(lines)
            assert engine.ready.llm.get_num_unfinished_requests() == 1
        # leaving the block closes the connection mid-stream
    assert await no_running_request(engine), "vLLM still generates for a client that hung up"

    # not streamed: the client gives up waiting for the whole answer
    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        request = asyncio.create_task(http.post("/v1/chat/completions", json=LONG))
        await until_running(engine)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    assert await no_running_request(engine), "vLLM still generates for a client that hung up"


async def test_a_request_beyond_max_concurrency_gets_429(engine):
    front = Front(Settings(max_concurrency=2), engine)
    async with serving(front) as base, httpx.AsyncClient(base_url=base, timeout=60) as http:
        async with (
            http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as first,
            http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as second,
        ):
            assert first.status_code == second.status_code == 200
            assert front.in_flight == 2
            refused = await http.post("/v1/chat/completions", json={**LONG, "max_tokens": 4})
            assert refused.status_code == 429
            assert refused.headers["retry-after"] == "1"
            error = refused.json()["error"]
            assert error["code"] == 429 and "MAX_CONCURRENCY=2" in error["message"]
            assert (await http.get("/ping")).status_code == 200, "/ping is not counted"
        assert await no_running_request(engine)
        assert front.in_flight == 0
        answer = await http.post("/v1/chat/completions", json={**LONG, "max_tokens": 4})
        assert answer.status_code == 200


async def test_requests_before_the_engine_wait_for_it(engine):
    """/ping is 204 until the engine serves; a request meanwhile waits (up to
    BOOT_WAIT_S) instead of failing, then gets its answer."""
    front = Front(Settings(boot_wait_s=0.3))
    async with serving(front) as base, httpx.AsyncClient(base_url=base, timeout=60) as http:
        assert (await http.get("/ping")).status_code == 204
        late = await http.post("/v1/completions", json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 4})
        assert late.status_code == 503 and late.headers["retry-after"] == "1"
        assert "BOOT_WAIT_S=0.3" in late.json()["error"]["message"]

        front.settings = Settings(boot_wait_s=30)
        waiting = asyncio.create_task(
            http.post("/v1/completions", json={"model": MODEL, "prompt": "1, 2, 3,", "max_tokens": 8, "temperature": 0})
        )
        await asyncio.sleep(0.3)
        assert not waiting.done()
        front.attach(engine)
        answer = await waiting
        assert answer.status_code == 200 and answer.json()["choices"][0]["text"].startswith(" 4, 5")
        assert (await http.get("/ping")).status_code == 200


def test_listen_address():
    settings = Settings()
    assert listen_address(settings, {}, local=False) == Listen("0.0.0.0", 80, 80)
    assert listen_address(settings, {}, local=True) == Listen("127.0.0.1", 8000, 8000)
    assert listen_address(Settings(port_health=81), {"PORT": "5000"}, local=False) == Listen("0.0.0.0", 5000, 81)
    assert listen_address(settings, {"PORT": "5000"}, local=True, port=9000).port == 9000
    with pytest.raises(ConfigError, match="PORT='http' is not valid"):
        listen_address(settings, {"PORT": "http"}, local=False)


# -- the process: python -m handler http -------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_worker(tmp_path: Path, **env: str) -> tuple[subprocess.Popen, int, int, Path]:
    port, health = free_port(), free_port()
    log = tmp_path / "worker.log"
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "handler", "http", "--port", str(port), "--port-health", str(health)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    return process, port, health, log


def tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-40:])


async def ping(http: httpx.AsyncClient, port: int) -> httpx.Response | None:
    try:
        return await http.get(f"http://127.0.0.1:{port}/ping")
    except httpx.TransportError:
        return None  # not listening yet


async def wait_for_ping(http, port: int, status: int, process, log: Path, timeout: float) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        answer = await ping(http, port)
        if answer is not None and answer.status_code == status:
            return answer
        assert process.poll() is None, f"the worker exited ({process.returncode}):\n{tail(log)}"
        assert time.monotonic() < deadline, f"/ping never said {status}:\n{tail(log)}"
        await asyncio.sleep(0.05)


def finish(process: subprocess.Popen, vllm_processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait for the worker to exit; the vLLM processes still alive after it."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"the worker did not exit within {timeout} s")
    _, alive = psutil.wait_procs(vllm_processes, timeout=15)
    for leftover in alive:
        leftover.kill()
    return alive


async def test_the_process_pings_204_then_200_and_stops_on_sigterm(tmp_path):
    process, port, health, log = start_worker(tmp_path)
    vllm_processes: list[psutil.Process] = []
    try:
        async with httpx.AsyncClient(timeout=120) as http:
            first = await wait_for_ping(http, health, 204, process, log, timeout=30)
            assert first.content == b""
            assert (await ping(http, port)).status_code == 204, "the app's port answers /ping too"
            early = asyncio.create_task(
                http.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    json={"model": MODEL, "messages": CAPITAL, "temperature": 0, "max_tokens": 32},
                )
            )
            await wait_for_ping(http, health, 200, process, log, timeout=240)
            answer = await early
            assert answer.status_code == 200, answer.text
            assert answer.json()["choices"][0]["message"]["content"] == "The capital of France is Paris."
            assert (await http.get(f"http://127.0.0.1:{health}/v1/models")).status_code == 404

            vllm_processes = psutil.Process(process.pid).children(recursive=True)
            assert vllm_processes
            async with http.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={**LONG, "stream": True}
            ) as stream:
                lines = stream.aiter_lines()
                await anext(lines)
                process.send_signal(signal.SIGTERM)  # how RunPod stops a worker

                async def drain() -> None:
                    try:
                        async for _ in lines:
                            pass
                    except httpx.TransportError:
                        pass  # the connection closed with the worker

                await asyncio.wait_for(drain(), 30)  # 4000 tokens would take minutes
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        alive = finish(process, vllm_processes, 30)
    assert not alive, f"vLLM processes outlived the worker: {alive}"
    assert "Traceback" not in log.read_text()


async def test_engine_death_turns_ping_to_503_and_exits_non_zero(tmp_path):
    process, port, health, log = start_worker(tmp_path, FATAL_EXIT_DELAY_S="2")
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            await wait_for_ping(http, port, 200, process, log, timeout=240)
            vllm_processes = psutil.Process(process.pid).children(recursive=True)
            core = [p for p in vllm_processes if "EngineCore" in " ".join([p.name(), *p.cmdline()])]
            assert core, [p.name() for p in vllm_processes]
            core[0].kill()
            dead = await wait_for_ping(http, health, 503, process, log, timeout=15)
            reason = dead.json()["error"]
            assert reason["code"] == 503 and "died" in reason["message"]
            refused = await http.post(
                f"http://127.0.0.1:{port}/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}
            )
            assert refused.status_code >= 500
        alive = finish(process, vllm_processes, 30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, "an engine death exits non-zero, so RunPod replaces the worker"
    assert not alive, f"vLLM processes outlived the worker: {alive}"
    assert "the engine failed; the worker exits" in log.read_text()
