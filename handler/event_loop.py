"""The event loop the front end runs on: uvloop where it is installed (it
comes with vLLM), as ``vllm serve`` runs its own, else asyncio's.

Every token passes through this process's loop several times (vLLM's output
handler, its serving layer, the worker's batching, the runpod SDK's posts),
and asyncio's pure-Python loop cost more per token than all of the worker's
own code (bench/frontend.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the fast loop."""
    use_fast_loop()
    return asyncio.run(main)


def use_fast_loop() -> None:
    """Make every event loop this process creates from now on a uvloop one,
    also the one the runpod SDK makes with ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
