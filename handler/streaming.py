"""Server-sent events: split a byte stream into whole events, and batch them.

Every item a RunPod handler yields costs one HTTP POST to RunPod, so events
are grouped: the stream's opening events go out at once (until the first one
that carries generated text, so batching never delays the first token); after
that a batch is flushed when it holds ``max_events`` events or its oldest event
is ``max_delay_s`` old, whichever comes first.
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any, TypeVar

T = TypeVar("T")

DONE = "data: [DONE]\n\n"


async def sse_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Whole SSE events (each ending with a blank line) from arbitrary chunks.
    UTF-8 is decoded incrementally: a character split between two chunks is
    joined, and bytes that are not UTF-8 become U+FFFD instead of failing the job."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    buffer = ""
    async for chunk in chunks:
        buffer += decoder.decode(chunk)
        buffer = buffer.replace("\r\n", "\n")
        while "\n\n" in buffer:
            event, buffer = buffer.split("\n\n", 1)
            if event.strip():
                yield event + "\n\n"
    buffer += decoder.decode(b"", final=True)
    if buffer.strip():
        yield buffer.rstrip("\n") + "\n\n"


def event_data(event: str) -> Any:
    """The JSON payload of a ``data:`` event; ``None`` for ``[DONE]`` and comments."""
    lines = [line[5:].lstrip() for line in event.splitlines() if line.startswith("data:")]
    data = "\n".join(lines)
    if not data or data == "[DONE]":
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def carries_text(event: str) -> bool:
    """Whether an OpenAI stream event holds generated text (or is the end)."""
    if DONE.strip() in event:
        return True
    data = event_data(event)
    if not isinstance(data, dict):
        return False
    if "error" in data:
        return True
    for choice in data.get("choices") or ():
        delta = choice.get("delta") or {}
        if choice.get("text") or any(
            delta.get(key) for key in ("content", "reasoning_content", "reasoning", "tool_calls")
        ):
            return True
        if choice.get("finish_reason"):
            return True
    return False


async def batched(
    source: AsyncIterable[T],
    max_items: int,
    max_delay_s: float,
    urgent_until: Callable[[T], bool] = lambda item: True,
) -> AsyncIterator[list[T]]:
    """Group items of ``source`` into lists.

    Items are passed on one by one until one for which ``urgent_until`` is true
    has gone out; from then on they are grouped by count and age. The source is
    read ahead while the consumer is busy with the previous batch.
    """
    loop = asyncio.get_running_loop()
    iterator = source.__aiter__()
    urgent = True
    batch: list[T] = []
    deadline = 0.0
    pending: asyncio.Future | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(iterator.__anext__())
            timeout = max(0.0, deadline - loop.time()) if batch else None
            done, _ = await asyncio.wait({pending}, timeout=timeout)
            if not done:
                yield batch
                batch = []
                continue
            future, pending = pending, None
            try:
                item = future.result()
            except StopAsyncIteration:
                break
            batch.append(item)
            if urgent or len(batch) >= max_items:
                if urgent and urgent_until(item):
                    urgent = False
                yield batch
                batch = []
            elif len(batch) == 1:
                deadline = loop.time() + max_delay_s
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
    if batch:
        yield batch
