"""LoRA on the real engine: an adapter for the embedded model, fabricated with
peft at test time (conftest's ``lora_adapter``), served through ENABLE_LORA and
LORA_MODULES, listed by /v1/models and chosen per request by its name."""

from __future__ import annotations

import asyncio

import openai
from conftest import CAPITAL, GREEDY, LORA_NAME, MODEL, job_error, native_text, run_job
from test_local_endpoint import local_endpoint


def chat(model: str) -> dict:
    return {"openai_route": "/v1/chat/completions", "openai_input": {"model": model, "messages": CAPITAL, **GREEDY}}


async def test_models_lists_the_adapter_beside_its_base(worker, lora_adapter):
    [models] = await run_job(worker, {"openai_route": "/v1/models"})
    cards = {card["id"]: card for card in models["data"]}
    assert list(cards) == [MODEL, LORA_NAME]
    assert cards[LORA_NAME]["parent"] == MODEL
    assert cards[LORA_NAME]["root"] == str(lora_adapter)


async def test_an_openai_job_picks_the_adapter_by_name(worker):
    [base] = await run_job(worker, chat(MODEL))
    [adapted] = await run_job(worker, chat(LORA_NAME))
    assert adapted["model"] == LORA_NAME
    assert "Paris" in base["choices"][0]["message"]["content"]
    assert adapted["choices"][0]["message"]["content"] != base["choices"][0]["message"]["content"], (
        "the adapter's weights change the greedy answer"
    )


async def test_a_native_job_picks_the_adapter_by_name(worker):
    job = {"messages": CAPITAL, "sampling_params": GREEDY}
    base = native_text(await run_job(worker, job))
    adapted = native_text(await run_job(worker, {**job, "model": LORA_NAME}))
    [openai_answer] = await run_job(worker, chat(LORA_NAME))
    assert adapted == openai_answer["choices"][0]["message"]["content"], "the same request either way"
    assert adapted != base
    streamed = native_text(await run_job(worker, {**job, "model": LORA_NAME, "stream": True}))
    assert streamed == adapted


async def test_a_native_prompt_job_picks_the_adapter_too(worker):
    job = {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 8}}
    base = native_text(await run_job(worker, job))
    adapted = native_text(await run_job(worker, {**job, "model": LORA_NAME}))
    assert base and adapted and adapted != base


async def test_an_unknown_model_is_a_404_naming_it(worker):
    for job in (chat("no-such-adapter"), {"messages": CAPITAL, "model": "no-such-adapter"}):
        error = job_error(await run_job(worker, job))
        assert error["code"] == 404, error
        assert "no-such-adapter" in error["message"]


async def test_native_model_must_be_a_string(worker):
    error = job_error(await run_job(worker, {"messages": CAPITAL, "model": 7}))
    assert error["code"] == 400 and "input.model" in error["message"], error


async def test_the_local_endpoint_lists_and_serves_the_adapter(worker):
    async with local_endpoint(worker) as (url, _):
        sdk = openai.OpenAI(base_url=f"{url}/v2/local/openai/v1", api_key="local", max_retries=0)
        models = await asyncio.to_thread(sdk.models.list)
        assert [m.id for m in models.data] == [MODEL, LORA_NAME]
        answer = await asyncio.to_thread(sdk.chat.completions.create, model=LORA_NAME, messages=CAPITAL, **GREEDY)
        assert answer.model == LORA_NAME and answer.choices[0].message.content
