"""OpenAI jobs ({"openai_route", "openai_input"}) through vLLM's own app, in process."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from conftest import CAPITAL, GREEDY, LORA_NAME, job_error, native_text, run_job

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def chat(**extra):
    return {
        "openai_route": "/v1/chat/completions",
        "openai_input": {"model": MODEL, "messages": CAPITAL, "temperature": 0, "max_tokens": 32, **extra},
    }


def sse_payloads(items: list[str]) -> list[dict]:
    """Check that every yielded item is whole SSE events; return their JSON."""
    payloads = []
    for item in items:
        assert isinstance(item, str) and item.endswith("\n\n"), repr(item)
        for event in item.split("\n\n")[:-1]:
            assert event.startswith("data: "), repr(event)
            if event == "data: [DONE]":
                continue
            payloads.append(json.loads(event[len("data: ") :]))
    return payloads


async def test_chat_completion(worker):
    [answer] = await run_job(worker, chat())
    assert answer["object"] == "chat.completion"
    assert "Paris" in answer["choices"][0]["message"]["content"]
    assert answer["usage"]["completion_tokens"] > 0


async def test_chat_stream_is_whole_events_and_matches_the_greedy_text(worker):
    [whole] = await run_job(worker, chat())
    items = await run_job(worker, chat(stream=True))
    assert job_error(items) is None
    assert items[-1].endswith("data: [DONE]\n\n")
    payloads = sse_payloads(items)
    text = "".join(c["delta"].get("content") or "" for p in payloads for c in p["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert len(items) < len(payloads) + 1, "events are batched into fewer yields"


async def test_completion_and_its_stream(worker):
    body = {"model": MODEL, "prompt": "1, 2, 3,", "temperature": 0, "max_tokens": 8}
    [whole] = await run_job(worker, {"openai_route": "/v1/completions", "openai_input": body})
    assert whole["object"] == "text_completion"
    items = await run_job(worker, {"openai_route": "/v1/completions", "openai_input": {**body, "stream": True}})
    streamed = "".join(c["text"] for p in sse_payloads(items) for c in p["choices"])
    assert streamed == whole["choices"][0]["text"]
    assert streamed.startswith(" 4, 5")


async def test_a_stream_interval_sends_the_same_text_in_fewer_events(worker):
    """vLLM's ``stream_interval`` (per request, or STREAM_INTERVAL for the
    worker) makes a chunk of every N tokens, the first and last at once: the
    lever for a front end's CPU per token (docs/performance.md)."""
    body = {"model": MODEL, "prompt": "1,", "temperature": 0, "max_tokens": 16, "ignore_eos": True, "stream": True}

    async def pieces(**extra) -> list[str]:
        items = await run_job(worker, {"openai_route": "/v1/completions", "openai_input": {**body, **extra}})
        assert job_error(items) is None
        return [c["text"] for p in sse_payloads(items) for c in p["choices"] if c["text"]]

    each, merged = await pieces(), await pieces(stream_interval=4)
    assert "".join(merged) == "".join(each)
    assert len(each) == 16, each
    assert len(merged) == 1 + 15 // 4 + 1, merged  # the first token, every 4 more, the rest


async def test_models_is_a_get_without_body(worker):
    for job in ({"openai_route": "/v1/models"}, {"openai_route": "/v1/models", "openai_input": {}}):
        [models] = await run_job(worker, job)
        assert [m["id"] for m in models["data"]] == [MODEL, LORA_NAME]  # the session engine's adapter


async def test_responses_api(worker):
    body = {"model": MODEL, "input": "What is the capital of France?", "temperature": 0, "max_output_tokens": 32}
    [answer] = await run_job(worker, {"openai_route": "/v1/responses", "openai_input": body})
    assert answer["object"] == "response"
    assert "Paris" in json.dumps(answer["output"])


async def test_anthropic_messages(worker):
    body = {"model": MODEL, "max_tokens": 32, "temperature": 0, "messages": CAPITAL}
    [answer] = await run_job(worker, {"openai_route": "/v1/messages", "openai_input": body})
    assert answer["type"] == "message"
    assert "Paris" in answer["content"][0]["text"]


async def test_tokenize_and_detokenize(worker):
    [tokens] = await run_job(worker, {"openai_route": "/tokenize", "openai_input": {"model": MODEL, "prompt": "Paris"}})
    assert tokens["count"] == len(tokens["tokens"]) > 0
    [text] = await run_job(
        worker, {"openai_route": "/detokenize", "openai_input": {"model": MODEL, "tokens": tokens["tokens"]}}
    )
    assert text["prompt"] == "Paris"


async def test_embeddings_route_is_absent_for_a_generative_model(worker):
    error = job_error(
        await run_job(worker, {"openai_route": "/v1/embeddings", "openai_input": {"model": MODEL, "input": "x"}})
    )
    assert error["code"] == 404
    assert "/v1/embeddings" in error["message"] and "POST /v1/chat/completions" in error["message"]


async def test_worker_vllm_route_form(worker):
    [answer] = await run_job(
        worker, {"route": "/v1/chat/completions", "method": "POST", "body": chat()["openai_input"]}
    )
    assert "Paris" in answer["choices"][0]["message"]["content"]
    [models] = await run_job(worker, {"route": "/v1/models"})
    assert models["object"] == "list"


async def test_non_json_response_comes_back_as_text(worker):
    [metrics] = await run_job(worker, {"openai_route": "/metrics"})
    assert isinstance(metrics, str) and "vllm:" in metrics


async def test_unknown_route_lists_the_served_routes(worker):
    error = job_error(await run_job(worker, {"openai_route": "/v1/chat/complete", "openai_input": {"x": 1}}))
    assert error["code"] == 404
    assert "unknown route '/v1/chat/complete'" in error["message"]
    for route in ("/v1/completions", "/v1/models", "/v1/responses", "/v1/messages", "/tokenize"):
        assert route in error["message"]


async def test_wrong_method(worker):
    error = job_error(await run_job(worker, {"route": "/v1/models", "method": "POST", "body": {"a": 1}}))
    assert error["code"] == 405 and "GET" in error["message"]


async def test_wrong_model_name_is_vllms_own_404(worker):
    error = job_error(await run_job(worker, chat(model="gpt-4")))
    assert error["code"] == 404
    assert error["type"] == "NotFoundError"
    assert "gpt-4" in error["message"]


async def test_wrong_types_are_vllms_own_400(worker):
    error = job_error(await run_job(worker, chat(temperature="hot")))
    assert error["code"] == 400
    assert "temperature" in error["message"]


async def test_max_tokens_beyond_the_context(worker):
    error = job_error(await run_job(worker, chat(max_tokens=100_000)))
    assert error["code"] == 400
    assert "context" in error["message"] or "max_tokens" in error["message"]


async def test_malformed_openai_input(worker):
    error = job_error(await run_job(worker, {"openai_route": "/v1/chat/completions", "openai_input": "hello"}))
    assert error["code"] == 400 and "input.openai_input" in error["message"]
    error = job_error(await run_job(worker, {"openai_route": "/v1/chat/completions", "openai_input": {"model": MODEL}}))
    assert error["code"] == 400 and "messages" in error["message"]
    error = job_error(await run_job(worker, {"openai_route": 5}))
    assert "input.openai_route" in error["message"]


async def test_worker_keeps_serving_after_errors(worker):
    await run_job(worker, chat(model="nope"))
    [answer] = await run_job(worker, chat())
    assert "Paris" in answer["choices"][0]["message"]["content"]


async def _unfinished(engine) -> int:
    return engine.ready.llm.get_num_unfinished_requests()


async def _cancel_and_expect_idle(engine, task) -> None:
    """Cancel the job's task; within 1 s the engine has nothing left to do."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    deadline = time.monotonic() + 1.0
    while await _unfinished(engine) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert await _unfinished(engine) == 0


async def test_cancelling_a_long_stream_aborts_the_generation(engine, worker):
    job = chat(stream=True, max_tokens=4000, ignore_eos=True)
    first = asyncio.Event()

    async def consume():
        async for _ in worker.handle({"id": "long", "input": job}):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 60)
    assert await _unfinished(engine) == 1
    await _cancel_and_expect_idle(engine, task)


async def test_cancelling_a_waiting_non_streamed_job_aborts_it(engine, worker):
    job = chat(max_tokens=4000, ignore_eos=True)
    task = asyncio.create_task(run_job(worker, job))
    deadline = time.monotonic() + 30
    while not await _unfinished(engine) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    await _cancel_and_expect_idle(engine, task)


async def test_sixteen_concurrent_mixed_jobs(worker):
    jobs, checks = [], []
    for i in range(16):
        n = 10 * i + 1
        prompt = f"{n}, {n + 1}, {n + 2},"
        expected = f" {n + 3}, {n + 4}"
        stream = i % 2 == 1
        kind = i % 4
        if kind == 0:
            jobs.append({"prompt": prompt, "sampling_params": {"temperature": 0, "max_tokens": 10}, "stream": stream})
            checks.append(lambda items, e=expected: native_text(items).startswith(e))
        elif kind == 1:
            jobs.append({"messages": CAPITAL, "sampling_params": GREEDY, "stream": stream})
            checks.append(lambda items: "Paris" in native_text(items))
        elif kind == 2:
            body = {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 10, "stream": stream}
            jobs.append({"openai_route": "/v1/completions", "openai_input": body})
            checks.append(
                lambda items, e=expected, s=stream: (
                    "".join(c["text"] for p in sse_payloads(items) for c in p["choices"])
                    if s
                    else items[0]["choices"][0]["text"]
                ).startswith(e)
            )
        else:
            jobs.append(chat(stream=stream))
            checks.append(
                lambda items, s=stream: (
                    "Paris"
                    in (
                        "".join(c["delta"].get("content") or "" for p in sse_payloads(items) for c in p["choices"])
                        if s
                        else items[0]["choices"][0]["message"]["content"]
                    )
                )
            )
    results = await asyncio.gather(*(run_job(worker, job, f"mixed-{i}") for i, job in enumerate(jobs)))
    for i, (items, check) in enumerate(zip(results, checks, strict=True)):
        assert job_error(items) is None, (i, items)
        assert check(items), (i, jobs[i], items)
