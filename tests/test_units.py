"""Pure functions: input models, native translation, SSE splitting and batching."""

from __future__ import annotations

import asyncio
import json

import pytest

from handler import jobs, native
from handler.errors import JobError
from handler.settings import Settings
from handler.streaming import batched, carries_text, sse_events


def test_job_shapes():
    assert isinstance(jobs.parse({"prompt": "x"}), jobs.NativeJob)
    assert jobs.parse({"openai_route": "/v1/models"}).request() == ("GET", "/v1/models", None)
    assert jobs.parse({"openai_route": "/v1/models", "openai_input": {}}).request()[0] == "GET"
    assert jobs.parse({"openai_route": "/v1/completions", "openai_input": {"a": 1}}).request()[0] == "POST"
    assert jobs.parse({"route": "/v1/models", "body": {"a": 1}}).request()[0] == "POST"
    assert jobs.parse({"route": "/v1/models", "method": "DELETE"}).request()[0] == "DELETE"


@pytest.mark.parametrize(
    "job_input,says",
    [
        (None, "not null"),
        ("hello", "not a string"),
        ({}, 'exactly one of "prompt"'),
        ({"prompt": "x", "sampling_params": [1]}, "input.sampling_params"),
        ({"openai_route": "/v1/models", "extra": 1}, "input.extra: unknown field"),
        ({"route": "/x", "method": "TRACE"}, "input.method"),
    ],
)
def test_bad_inputs_are_named(job_input, says):
    with pytest.raises(JobError) as raised:
        jobs.parse(job_input)
    assert says in raised.value.message
    assert raised.value.status == 400


def test_native_request_translation():
    route, body = native.to_request(
        jobs.parse(
            {
                "messages": [{"role": "user", "content": "hi"}],
                "sampling_params": {"logprobs": 2, "extra_args": {"a": 1}, "max_tokens": 5},
                "stream": True,
            }
        ),
        "m",
    )
    assert route == "/v1/chat/completions"
    assert body["top_logprobs"] == 2 and body["logprobs"] is True
    assert body["vllm_xargs"] == {"a": 1}
    assert body["max_completion_tokens"] == 5
    assert body["stream_options"]["include_usage"]
    route, body = native.to_request(jobs.parse({"prompt": "p"}), "m")
    assert route == "/v1/completions" and body["max_tokens"] is None
    assert native.needs_context_budget(route, body)
    assert native.rest_of_context({"count": 10, "max_model_len": 100}) == 90
    assert native.rest_of_context({"count": 100, "max_model_len": 100}) == 1


def test_settable_fields_come_from_vllm():
    fields = native.settable_fields()
    assert {"temperature", "top_p", "top_k", "n", "stop", "seed", "structured_outputs", "extra_args"} <= fields
    assert "output_kind" not in fields


async def _aiter(items, delays=None):
    for i, item in enumerate(items):
        if delays:
            await asyncio.sleep(delays[i])
        yield item


async def test_sse_events_are_whole_whatever_the_chunking():
    text = 'data: {"a": 1}\n\ndata: {"b": 2}\n\ndata: [DONE]\n\n'
    chunks = [text[i : i + 5].encode() for i in range(0, len(text), 5)]
    events = [e async for e in sse_events(_aiter(chunks))]
    assert events == ['data: {"a": 1}\n\n', 'data: {"b": 2}\n\n', "data: [DONE]\n\n"]


async def test_batching_sends_urgent_items_at_once_then_groups_by_count():
    batches = [b async for b in batched(_aiter(list(range(10))), 4, 10.0, urgent_until=lambda i: i >= 1)]
    assert batches == [[0], [1], [2, 3, 4, 5], [6, 7, 8, 9]]


async def test_batching_flushes_by_age():
    delays = [0, 0, 0, 0.3, 0]
    batches = [b async for b in batched(_aiter(list("abcde"), delays), 100, 0.1)]
    assert batches == [["a"], ["b", "c"], ["d", "e"]]


def test_carries_text():
    role = 'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
    token = 'data: {"choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
    assert not carries_text(role)
    assert carries_text(token)
    assert carries_text("data: [DONE]\n\n")


def test_job_error_keeps_vllms_error_object():
    body = {"error": {"message": "nope", "type": "NotFoundError", "param": "model", "code": 404}}
    error = JobError.from_response(404, json.dumps(body).encode())
    assert json.loads(error.to_json()) == body
    fastapi = JobError.from_response(422, b'{"detail": [{"loc": ["body", "messages"], "msg": "Field required"}]}')
    assert fastapi.message == "messages: Field required" and fastapi.type == "UnprocessableEntityError"


def test_route_normalization():
    from handler.routes import normalize

    assert normalize("v1/models") == "/v1/models"
    assert normalize("/openai/v1/chat/completions") == "/v1/chat/completions"
    assert normalize(" /tokenize ") == "/tokenize"


def test_batches_wait_longer_only_when_many_jobs_stream():
    from handler.worker import Worker

    worker = Worker(engine=None, settings=Settings(stream_batch_max_ms=100, stream_batches_per_s=50))  # type: ignore[arg-type]
    assert worker.batch_delay_s() == 0.1
    worker.streaming = 5  # 5 streams x 10 batches/s: the budget, no longer wait
    assert worker.batch_delay_s() == 0.1
    worker.streaming = 20  # 20 streams share 50 batches/s: 0.4 s each
    assert worker.batch_delay_s() == 0.4
    off = Worker(engine=None, settings=Settings(stream_batch_max_ms=100, stream_batches_per_s=0))  # type: ignore[arg-type]
    off.streaming = 20
    assert off.batch_delay_s() == 0.1
