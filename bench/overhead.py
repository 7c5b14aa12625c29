"""What the worker costs on top of vLLM.

On one engine, the same 16 concurrent requests of 128 generated tokens
(ignore_eos, greedy) go through:

  (a) AsyncLLM.generate directly (the ceiling)
  (b) native jobs through the handler (streamed, so the first token is seen)
  (c) OpenAI /v1/completions jobs, not streamed
  (d) OpenAI /v1/completions jobs, streamed

For each it prints generated tokens/s and the p50 time to first output (for
(c), a non-streamed answer, that is the whole answer), and the ratio to (a).
Rounds are interleaved so that machine noise hits every path alike.

    make bench            # or: .venv/bin/python bench/overhead.py --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")

from common import CONCURRENCY, PROMPT, TOKENS, direct, round_of  # noqa: E402 - after the path


async def through_handler(worker, job_input) -> tuple[float, int]:
    from handler.streaming import event_data

    start = time.perf_counter()
    first = None
    count = 0
    async for item in worker.handle({"id": uuid.uuid4().hex, "input": job_input}):
        if first is None:
            first = time.perf_counter() - start
        if isinstance(item, dict) and "error" in item:
            raise RuntimeError(item["error"])
        if isinstance(item, str):  # SSE text: count usage from the final events
            for event in item.split("\n\n"):
                data = event_data(event + "\n\n") if event else None
                if isinstance(data, dict) and data.get("usage"):
                    count = data["usage"]["completion_tokens"]
        elif "usage" in item:
            count = item["usage"].get("output") or item["usage"].get("completion_tokens") or count
    assert first is not None, "no token came back"
    return first, count


def scenarios(engine, worker, model: str):
    sampling = {"max_tokens": TOKENS, "ignore_eos": True, "temperature": 0}
    openai = {"model": model, "prompt": PROMPT, **sampling}
    stream_usage = {"stream": True, "stream_options": {"include_usage": True}}
    return {
        "(a) AsyncLLM.generate": lambda: direct(engine.ready.llm),
        "(b) native job, streamed": lambda: through_handler(
            worker, {"prompt": PROMPT, "sampling_params": sampling, "stream": True}
        ),
        "(c) OpenAI job": lambda: through_handler(worker, {"openai_route": "/v1/completions", "openai_input": openai}),
        "(d) OpenAI job, streamed": lambda: through_handler(
            worker, {"openai_route": "/v1/completions", "openai_input": {**openai, **stream_usage}}
        ),
    }


async def main(rounds: int) -> None:
    from handler.engine import Engine
    from handler.settings import Settings
    from handler.worker import Worker

    engine = Engine(Settings.from_env())
    ready = await engine.start()
    worker = Worker(engine)
    table = scenarios(engine, worker, ready.served_model)
    for make in table.values():  # warm-up
        await round_of(make)
    rates: dict[str, list[float]] = {name: [] for name in table}
    firsts: dict[str, list[float]] = {name: [] for name in table}
    for _ in range(rounds):
        for name, make in table.items():
            rate, first = await round_of(make)
            rates[name].append(rate)
            firsts[name] += first
    await engine.shutdown()

    base_rate = statistics.median(rates["(a) AsyncLLM.generate"])
    base_ttft = statistics.median(firsts["(a) AsyncLLM.generate"])
    print(
        f"\n{CONCURRENCY} concurrent requests x {TOKENS} tokens, {rounds} rounds, "
        f"{os.cpu_count()} CPUs, model {ready.served_model}"
    )
    print("| path | tokens/s (median) | ratio to (a) | first output p50 (ms) | vs (a) (ms) |")
    print("|---|---|---|---|---|")
    for name in table:
        rate = statistics.median(rates[name])
        ttft = statistics.median(firsts[name])
        print(
            f"| {name} | {rate:.1f} | {rate / base_rate:.3f} | {ttft * 1000:.0f} | {(ttft - base_ttft) * 1000:+.0f} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(parser.parse_args().rounds))
