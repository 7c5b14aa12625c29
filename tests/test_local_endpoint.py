"""The local endpoint, driven by the real openai and runpod SDKs over loopback."""

from __future__ import annotations

import asyncio
import json
import re
import time
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
import runpod
from conftest import CAPITAL, GREEDY, LORA_NAME, native_text, serving
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from handler.endpoint import LocalEndpoint
from handler.jobqueue import JobQueue
from handler.runpod_api import deliver_webhook
from handler.settings import Settings
from handler.worker import Worker

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LONG = {"messages": CAPITAL, "sampling_params": {"max_tokens": 4000, "ignore_eos": True}, "stream": True}


@asynccontextmanager
async def local_endpoint(worker, api_key=None):
    queue = JobQueue(worker.handle, worker.concurrency(), on_finished=deliver_webhook)
    endpoint = LocalEndpoint(queue)
    queue.start()
    try:
        async with serving(endpoint.app(api_key)) as url:
            yield url, queue
    finally:
        await queue.stop()


@pytest.fixture(scope="session")
async def server(worker):
    async with local_endpoint(worker) as (url, queue):
        yield url, queue


@pytest.fixture
def rp(server):
    url, _ = server
    runpod.api_key = "local"
    runpod.endpoint_url_base = f"{url}/v2"
    return runpod.Endpoint("local")


def client(url, key="local"):
    return openai.OpenAI(base_url=f"{url}/v2/local/openai/v1", api_key=key, max_retries=0)


async def test_openai_sdk_chat_completions_models_and_errors(server):
    url, _ = server
    sdk = client(url)
    answer = await asyncio.to_thread(
        sdk.chat.completions.create, model=MODEL, messages=CAPITAL, temperature=0, max_tokens=32
    )
    assert "Paris" in answer.choices[0].message.content

    def stream_chat():
        first_at, pieces = None, []
        start = time.monotonic()
        for chunk in sdk.chat.completions.create(
            model=MODEL, messages=CAPITAL, temperature=0, max_tokens=32, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                first_at = first_at or time.monotonic() - start
                pieces.append(chunk.choices[0].delta.content)
        return pieces, first_at, time.monotonic() - start

    pieces, first_at, total = await asyncio.to_thread(stream_chat)
    assert "".join(pieces) == answer.choices[0].message.content
    assert len(pieces) > 3 and first_at < total, "tokens arrive incrementally"

    completion = await asyncio.to_thread(
        sdk.completions.create, model=MODEL, prompt="1, 2, 3,", temperature=0, max_tokens=8
    )
    assert completion.choices[0].text.startswith(" 4, 5")
    models = await asyncio.to_thread(sdk.models.list)
    assert [m.id for m in models.data] == [MODEL, LORA_NAME]
    with pytest.raises(openai.NotFoundError) as raised:
        await asyncio.to_thread(sdk.chat.completions.create, model="gpt-4", messages=CAPITAL)
    assert "gpt-4" in raised.value.message
    with pytest.raises(openai.NotFoundError):  # streamed: the same status, as from vllm serve
        await asyncio.to_thread(sdk.chat.completions.create, model="gpt-4", messages=CAPITAL, stream=True)

    root = openai.OpenAI(base_url=f"{url}/openai/v1", api_key="x", max_retries=0)
    assert [m.id for m in (await asyncio.to_thread(root.models.list)).data] == [MODEL, LORA_NAME]


async def test_runpod_sdk_run_sync(rp):
    output = await asyncio.to_thread(rp.run_sync, {"input": {"messages": CAPITAL, "sampling_params": GREEDY}})
    assert "Paris" in native_text(output)


async def test_runpod_sdk_run_status_output_stream(rp):
    job = await asyncio.to_thread(rp.run, {"input": {"messages": CAPITAL, "sampling_params": GREEDY, "stream": True}})
    assert await asyncio.to_thread(job.status) in ("IN_QUEUE", "IN_PROGRESS", "COMPLETED")
    output = await asyncio.to_thread(job.output, 120)
    assert "Paris" in native_text(output)
    assert await asyncio.to_thread(job.status) == "COMPLETED"

    job = await asyncio.to_thread(rp.run, {"messages": CAPITAL, "sampling_params": GREEDY, "stream": True})
    streamed = await asyncio.to_thread(lambda: list(job.stream()))
    assert native_text(streamed) == native_text(output)


async def test_stream_returns_only_new_items(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=60) as http:
        job = (
            await http.post("/run", json={"input": {**LONG, "sampling_params": {"max_tokens": 40, "ignore_eos": True}}})
        ).json()
        seen = []
        while True:
            body = (await http.get(f"/stream/{job['id']}")).json()
            seen += [chunk["output"] for chunk in body["stream"]]
            if body["status"] == "COMPLETED" and not body["stream"]:
                break
            await asyncio.sleep(0.05)
        final = (await http.get(f"/status/{job['id']}")).json()
        assert seen == final["output"], "every item exactly once"
        assert final["executionTime"] > 0 and "delayTime" in final


async def test_cancel_aborts_the_generation(rp, engine):
    job = await asyncio.to_thread(rp.run, LONG)
    deadline = time.monotonic() + 60
    while await asyncio.to_thread(job.status) != "IN_PROGRESS" and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    while not engine.ready.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    answer = await asyncio.to_thread(job.cancel)
    assert answer["status"] == "CANCELLED"
    deadline = time.monotonic() + 1.0
    while engine.ready.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert engine.ready.llm.get_num_unfinished_requests() == 0


async def test_health(rp):
    health = await asyncio.to_thread(rp.health)
    assert set(health["jobs"]) >= {"completed", "failed", "inProgress", "inQueue", "retried"}
    assert health["jobs"]["completed"] >= 1


async def test_runsync_that_takes_too_long_answers_in_progress(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=60) as http:
        body = {"input": {"prompt": "1,", "sampling_params": {"max_tokens": 200, "ignore_eos": True}}}
        first = (await http.post("/runsync?wait=200", json=body)).json()
        assert first["status"] in ("IN_QUEUE", "IN_PROGRESS") and first["id"]
        while (status := (await http.post(f"/status/{first['id']}")).json())["status"] != "COMPLETED":
            await asyncio.sleep(0.1)
        assert status["output"][0]["usage"]["output"] == 200


async def test_bad_requests_get_runpod_statuses(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        response = await http.post("/v2/local/run", content=b"{not json")
        assert response.status_code == 400 and "JSON" in response.json()["error"]
        response = await http.post("/v2/local/run", json={"inputs": {}})
        assert response.status_code == 400 and '"input"' in response.json()["error"]
        response = await http.get("/v2/local/status/nope")
        assert response.status_code == 404 and "nope" in response.json()["error"]
        response = await http.post("/v2/local/cancel/nope")
        assert response.status_code == 404
        response = await http.get("/v2/local/nothing-here")
        assert response.status_code == 404
        response = await http.get("/v2/local/run")
        assert response.status_code == 405
        response = await http.post("/openai/v1/chat/completions", content=b"{oops")
        assert response.status_code == 400 and "error" in response.json()
        # a failed job is FAILED with the handler's error, and the server goes on
        failed = (await http.post("/v2/local/runsync", json={"input": {"prompt": 5}})).json()
        assert failed["status"] == "FAILED"
        assert "input.prompt" in json.loads(failed["error"])["error"]["message"]
        ok = (
            await http.post("/v2/local/runsync", json={"input": {"messages": CAPITAL, "sampling_params": GREEDY}})
        ).json()
        assert ok["status"] == "COMPLETED"


async def test_fifty_jobs_with_max_concurrency_four(engine):
    worker = Worker(engine, Settings(max_concurrency=4))
    async with local_endpoint(worker) as (url, queue):
        async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=60) as http:
            bodies = [
                {"input": {"prompt": f"{n}, {n + 1}, {n + 2},", "sampling_params": {"temperature": 0, "max_tokens": 8}}}
                for n in range(1, 51)
            ]
            ids = [r.json()["id"] for r in await asyncio.gather(*(http.post("/run", json=b) for b in bodies))]
            assert len(set(ids)) == 50
            in_progress = []
            while True:
                health = (await http.get("/health")).json()["jobs"]
                in_progress.append(health["inProgress"])
                if health["completed"] == 50:
                    break
                assert health["failed"] == 0
                await asyncio.sleep(0.05)
            statuses = [(await http.get(f"/status/{i}")).json() for i in ids]
    assert max(in_progress) <= 4 and queue.peak_running == 4
    for n, status in enumerate(statuses, start=1):
        assert status["status"] == "COMPLETED"
        # the answer counts on from this job's own numbers (the small model
        # sometimes skips one, so allow n+3..n+5)
        first = int(re.search(r"\d+", native_text(status["output"])).group())
        assert n + 3 <= first <= n + 5, (n, status["output"])


async def test_auth(worker):
    async with local_endpoint(worker, api_key="sekret") as (url, _):
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            assert (await http.get("/v2/local/health")).status_code == 401
            assert (await http.get("/v2/local/health", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await http.get("/v2/local/health", headers={"Authorization": "Bearer sekret"})).status_code == 200
            assert (await http.get("/openai/v1/models")).status_code == 401
        runpod.endpoint_url_base = f"{url}/v2"
        with pytest.raises(RuntimeError, match="Unauthorized"):
            await asyncio.to_thread(runpod.Endpoint("local", api_key="wrong").health)
        health = await asyncio.to_thread(runpod.Endpoint("local", api_key="sekret").health)
        assert "jobs" in health
        with pytest.raises(openai.AuthenticationError):
            await asyncio.to_thread(client(url, "wrong").models.list)
        assert (await asyncio.to_thread(client(url, "sekret").models.list)).data[0].id == MODEL


async def test_webhook_receives_the_finished_job(server):
    url, _ = server
    received: list[dict] = []

    async def hook(request):
        received.append(await request.json())
        return JSONResponse({"ok": True})

    async with serving(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hook_url:
        async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=60) as http:
            job = (
                await http.post(
                    "/run",
                    json={"input": {"messages": CAPITAL, "sampling_params": GREEDY}, "webhook": f"{hook_url}/hook"},
                )
            ).json()
            deadline = time.monotonic() + 60
            while not received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    [payload] = received
    assert payload["id"] == job["id"] and payload["status"] == "COMPLETED"
    assert "Paris" in native_text(payload["output"])


async def test_execution_timeout_and_purge_queue(engine):
    worker = Worker(engine, Settings(max_concurrency=1))
    async with local_endpoint(worker) as (url, queue):
        async with httpx.AsyncClient(base_url=f"{url}/v2/local", timeout=60) as http:
            slow = (await http.post("/run", json={"input": LONG, "policy": {"executionTimeout": 1500}})).json()
            queued = [(await http.post("/run", json={"input": {"prompt": "hi"}})).json() for _ in range(3)]
            assert (await http.get("/health")).json()["jobs"]["inQueue"] == 3
            assert (await http.post("/purge-queue")).json() == {"removed": 3, "status": "completed"}
            for job in queued:
                assert (await http.get(f"/status/{job['id']}")).status_code == 404
            deadline = time.monotonic() + 30
            while (status := (await http.get(f"/status/{slow['id']}")).json())["status"] != "TIMED_OUT":
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.1)
            assert "executionTimeout" in status["error"]
    deadline = time.monotonic() + 1.0
    while engine.ready.llm.get_num_unfinished_requests() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert engine.ready.llm.get_num_unfinished_requests() == 0, "the timed-out generation was aborted"


async def test_openai_paths_at_the_root_v1(server):
    url, _ = server
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0)
    assert [m.id for m in (await asyncio.to_thread(sdk.models.list)).data] == [MODEL, LORA_NAME]
