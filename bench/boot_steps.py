"""Boot steps: the worker's own share of a cold start, timed step by step in
one process on the embedded model.

End-to-end cold starts (bench/cold_start.py) on a shared 2-core machine vary
by several seconds from one run to the next, more than the worker adds to
vLLM's own boot. This times that share directly: vLLM's engine imports, then
each step the worker adds before the engine build, the build itself, the work
done beside it (off the critical path), and what follows it until the engine
serves. The target for the worker's own steps on the critical path is 0.5 s.

    .venv/bin/python bench/boot_steps.py
"""

from __future__ import annotations

import asyncio
import functools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TARGET_S = 0.5


def timed(marks: dict[str, float], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, recording in ``marks`` when it started and ended."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        marks.setdefault(f"{name} start", time.perf_counter())  # the first call: vi.build_app calls load_app too
        try:
            return function(*args, **kwargs)
        finally:
            marks[f"{name} end"] = time.perf_counter()

    return wrapper


def vllm_engine_import() -> None:
    """What any worker imports to build an engine (the bare floor's imports)."""
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: F401
    from vllm.v1.engine.async_llm import AsyncLLM  # noqa: F401


async def measure() -> list[tuple[str, float, str]]:
    began = time.perf_counter()
    vllm_engine_import()
    vllm_imported = time.perf_counter()
    from handler import vllm_internals as vi
    from handler.__main__ import build_worker

    imported = time.perf_counter()
    worker = build_worker(on_fatal=lambda reason: None)
    configured = time.perf_counter()
    marks: dict[str, float] = {}
    vi.build_async_llm = timed(marks, "build", vi.build_async_llm)
    # beside the build: engine.draft_beside, from its first step to its last
    vi.load_app = timed(marks, "load_app", vi.load_app)
    vi.freeze_gc_heap = timed(marks, "freeze", vi.freeze_gc_heap)
    start = time.perf_counter()
    try:
        ready = await worker.engine.start()
        served = time.perf_counter()
    finally:
        await worker.engine.shutdown()
    assert ready.drafted, "the app built beside the engine build was not used"
    before_build = marks["build start"] - start
    after_build = served - marks["build end"]
    own = [imported - vllm_imported, configured - imported, before_build, after_build]
    return [
        ("vLLM's engine imports (AsyncLLM, AsyncEngineArgs)", vllm_imported - began, "vLLM"),
        ("the worker's imports beyond them (handler, vllm_internals)", own[0], "worker"),
        ("engine configuration (env -> vLLM's serve parser)", own[1], "worker"),
        ("before the build (model files, parser plugins, the side thread)", own[2], "worker"),
        ("engine build (vi.build_async_llm)", marks["build end"] - marks["build start"], "vLLM"),
        (
            "beside the build (app import, chat template, app, heap freeze)",
            marks["freeze end"] - marks["load_app start"],
            "off",
        ),
        ("after the build (output loops, tasks, app state, lifespan)", own[3], "worker"),
        (f"the worker's own steps on the critical path (target <= {TARGET_S} s)", sum(own), "worker"),
    ]


def main() -> None:
    rows = asyncio.run(measure())
    print("boot steps on the embedded model, one process (seconds)")
    print("| step | seconds | whose, on the critical path |")
    print("|---|---|---|")
    for name, seconds, whose in rows:
        print(f"| {name} | {seconds:.2f} | {'beside the build' if whose == 'off' else whose} |")


if __name__ == "__main__":
    main()
