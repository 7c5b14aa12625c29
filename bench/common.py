"""What the throughput benchmarks share: the load (16 concurrent requests of
128 greedy tokens, ignore_eos), the ceiling (``AsyncLLM.generate`` straight on
the engine) and one round of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

CONCURRENCY = 16
TOKENS = 128
PROMPT = "Write a long story about a lighthouse keeper who"

# One request: (seconds to the first token, tokens generated).
Measure = Callable[[], Awaitable[tuple[float, int]]]


async def direct(llm: Any) -> tuple[float, int]:
    """One request straight on ``AsyncLLM.generate``: the ceiling."""
    from handler import vllm_internals as vi

    params = vi.SamplingParams(
        max_tokens=TOKENS, ignore_eos=True, temperature=0, output_kind=vi.RequestOutputKind.DELTA
    )
    start = time.perf_counter()
    first = None
    count = 0
    async for out in llm.generate(PROMPT, params, uuid.uuid4().hex):
        if first is None and out.outputs[0].token_ids:
            first = time.perf_counter() - start
        count += len(out.outputs[0].token_ids)
    assert first is not None, "no token came back"
    return first, count


async def round_of(measure: Measure) -> tuple[float, list[float]]:
    """CONCURRENCY requests at once: tokens/s, and each one's first-token time."""
    start = time.perf_counter()
    results = await asyncio.gather(*(measure() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    tokens = sum(count for _, count in results)
    if tokens != CONCURRENCY * TOKENS:
        raise RuntimeError(f"expected {CONCURRENCY * TOKENS} tokens, got {tokens}")
    return tokens / elapsed, [first for first, _ in results]
