"""Native jobs ({"prompt" | "messages", "sampling_params", "stream"}) on the real engine."""

from __future__ import annotations

import asyncio

from conftest import CAPITAL, GREEDY, job_error, native_text, run_job


async def test_greedy_chat_answers_paris(worker):
    items = await run_job(worker, {"messages": CAPITAL, "sampling_params": GREEDY})
    assert job_error(items) is None
    [output] = items
    assert "Paris" in native_text(items)
    choice = output["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert output["usage"]["input"] > 10 and output["usage"]["output"] > 0


async def test_prompt_job_completes_text(worker):
    items = await run_job(
        worker, {"prompt": "The capital of France is", "sampling_params": {"temperature": 0, "max_tokens": 8}}
    )
    assert job_error(items) is None
    assert native_text(items).strip()
    assert items[0]["usage"]["output"] == 8
    assert items[0]["choices"][0]["finish_reason"] == "length"


async def test_max_tokens_defaults_to_the_rest_of_the_context(worker):
    """Not vLLM's SamplingParams default of 16: a long answer is not cut at 16 tokens."""
    items = await run_job(
        worker,
        {
            "prompt": "Count: 1, 2, 3,",
            "sampling_params": {"temperature": 0, "ignore_eos": True, "stop": ["40,"]},
        },
    )
    assert job_error(items) is None
    assert items[0]["usage"]["output"] > 16
    assert items[0]["choices"][0]["finish_reason"] == "stop"


async def test_stream_concatenates_to_the_greedy_text(worker):
    whole = await run_job(worker, {"messages": CAPITAL, "sampling_params": GREEDY})
    streamed = await run_job(worker, {"messages": CAPITAL, "sampling_params": GREEDY, "stream": True})
    assert job_error(streamed) is None
    assert len(streamed) >= 2
    assert native_text(streamed) == native_text(whole)
    assert streamed[0]["choices"][0]["tokens"], "the first item carries text"
    assert streamed[-1]["choices"][-1]["finish_reason"] == "stop" or any(
        c["finish_reason"] == "stop" for item in streamed for c in item["choices"]
    )
    assert streamed[-1]["usage"]["output"] == whole[0]["usage"]["output"]


async def test_n_2_gives_two_choices(worker):
    params = {"n": 2, "temperature": 1.0, "seed": 1, "max_tokens": 8}
    [output] = await run_job(worker, {"prompt": "Once upon a time", "sampling_params": params})
    assert [c["index"] for c in output["choices"]] == [0, 1]
    assert all(c["tokens"][0] for c in output["choices"])
    streamed = await run_job(worker, {"prompt": "Once upon a time", "sampling_params": params, "stream": True})
    assert native_text(streamed, 0) and native_text(streamed, 1)


async def test_stop_string_ends_generation(worker):
    params = {"temperature": 0, "max_tokens": 32, "stop": [" Paris"]}
    [output] = await run_job(worker, {"messages": CAPITAL, "sampling_params": params})
    text = output["choices"][0]["tokens"][0]
    assert "Paris" not in text and text.startswith("The capital of France is")
    assert output["choices"][0]["finish_reason"] == "stop"


async def test_structured_output(worker):
    params = {"temperature": 0, "max_tokens": 5, "structured_outputs": {"choice": ["yes", "no"]}}
    [output] = await run_job(
        worker, {"messages": [{"role": "user", "content": "Is Paris in France?"}], "sampling_params": params}
    )
    assert output["choices"][0]["tokens"][0] in ("yes", "no")


async def test_unknown_sampling_param_is_named(worker):
    items = await run_job(worker, {"prompt": "hi", "sampling_params": {"temprature": 0.5}})
    error = job_error(items)
    assert error["code"] == 400
    assert "sampling_params.temprature" in error["message"]
    assert error["param"] == "sampling_params.temprature"


async def test_internal_sampling_param_is_refused(worker):
    error = job_error(await run_job(worker, {"prompt": "hi", "sampling_params": {"output_kind": 1}}))
    assert "sampling_params.output_kind" in error["message"]


async def test_wrong_sampling_param_type_names_the_field(worker):
    error = job_error(await run_job(worker, {"prompt": "hi", "sampling_params": {"temperature": "hot"}}))
    assert error["code"] == 400
    assert "temperature" in error["message"]


async def test_empty_input(worker):
    error = job_error(await run_job(worker, {}))
    assert error["code"] == 400
    assert '"prompt"' in error["message"] and '"messages"' in error["message"]


async def test_input_that_is_not_an_object(worker):
    error = job_error(await run_job(worker, ["What is the capital of France?"]))
    assert "must be a JSON object, not an array" in error["message"]


async def test_wrong_types_and_unknown_keys_are_named(worker):
    error = job_error(await run_job(worker, {"prompt": "hi", "stream": "yes"}))
    assert "input.stream" in error["message"]
    error = job_error(await run_job(worker, {"prompt": "hi", "max_tokens": 5}))
    assert "input.max_tokens: unknown field" in error["message"]
    error = job_error(await run_job(worker, {"prompt": 42}))
    assert "input.prompt" in error["message"]
    error = job_error(await run_job(worker, {"prompt": "a", "messages": CAPITAL}))
    assert "exactly one" in error["message"]


async def test_eight_concurrent_jobs_get_their_own_answers(worker):
    """Each job counts on from its own numbers, so a mixed-up answer shows."""
    starts = [10 * i + 1 for i in range(7)]
    jobs = [
        {
            "prompt": f"{n}, {n + 1}, {n + 2},",
            "sampling_params": {"temperature": 0, "max_tokens": 10},
            "stream": i % 2 == 0,
        }
        for i, n in enumerate(starts)
    ]
    jobs.append({"messages": CAPITAL, "sampling_params": GREEDY, "stream": True})
    results = await asyncio.gather(*(run_job(worker, job, f"job-{i}") for i, job in enumerate(jobs)))
    for n, items in zip(starts, results, strict=False):
        assert job_error(items) is None
        assert native_text(items).startswith(f" {n + 3}, {n + 4}"), (n, native_text(items))
    assert "Paris" in native_text(results[-1])


async def test_a_stream_interval_gives_fewer_longer_pieces_of_the_same_text(worker):
    """``sampling_params.stream_interval`` reaches vLLM: a streamed native job's
    pieces then hold up to that many tokens each (the first alone)."""
    params = {"max_tokens": 16, "ignore_eos": True, "temperature": 0}

    async def pieces(**extra) -> list[str]:
        items = await run_job(worker, {"prompt": "1,", "sampling_params": {**params, **extra}, "stream": True})
        assert job_error(items) is None
        return [t for item in items for c in item["choices"] for t in c["tokens"]]

    each, merged = await pieces(), await pieces(stream_interval=4)
    assert "".join(merged) == "".join(each)
    assert len(each) == 16, each
    assert len(merged) == 1 + 15 // 4 + 1, merged


async def test_jobs_streaming_together_share_the_post_budget(engine):
    """STREAM_BATCHES_PER_S is one budget for the whole worker: while four
    jobs stream, each one's batches wait four times as long as one job's
    alone, so that together they post no more often (bench/frontend.py
    measures what a post costs)."""
    import time

    from handler.settings import Settings
    from handler.worker import Worker

    # batches close by age only (no count cap): 100 ms alone, 4 / 2 = 2 s for four
    settings = Settings(stream_batch_max_ms=100, stream_batches_per_s=2, stream_batch_max_events=10_000)
    worker = Worker(engine, settings)
    job = {"prompt": "1,", "sampling_params": {"max_tokens": 48, "ignore_eos": True, "temperature": 0}, "stream": True}
    waits: list[float] = []

    async def watch() -> None:
        while True:
            waits.append(worker.batch_delay_s())
            await asyncio.sleep(0.005)

    async def timed(number: int) -> tuple[float, list]:
        began = time.monotonic()
        items = await run_job(worker, job, f"together-{number}")
        return time.monotonic() - began, items

    watcher = asyncio.create_task(watch())
    try:
        runs = await asyncio.gather(*(timed(n) for n in range(4)))
    finally:
        watcher.cancel()
    assert max(waits) == 4 / 2, "four streaming jobs: each batch waits up to 2 s"
    assert worker.streaming == 0 and worker.batch_delay_s() == 0.1, "none streaming: STREAM_BATCH_MAX_MS"
    for seconds, items in runs:
        assert job_error(items) is None
        assert sum(len(c["tokens"]) for item in items for c in item["choices"]) == 48
        # the first token alone, then a batch every 0.5 s at the most (2 s
        # while all four stream, 0.5 s once one is left); batches of 100 ms
        # would make about ten items a second
        assert len(items) <= 2 + seconds / 0.5, (len(items), seconds)
