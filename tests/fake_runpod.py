"""A stand-in for RunPod's worker-facing job API on loopback, as runpod 1.10
calls it: job-take, job-stop, job-stream and job-done. The production
entrypoint's tests and bench/cold_start.py point the runpod SDK at it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def worker_env(url: str, pod_id: str = "worker-1") -> dict[str, str]:
    """The environment that points the runpod SDK at the stand-in at ``url``."""
    return {
        "RUNPOD_POD_ID": pod_id,
        "RUNPOD_AI_API_KEY": "test",
        "RUNPOD_WEBHOOK_GET_JOB": f"{url}/v2/job-take/$ID?gpu=test",
        "RUNPOD_WEBHOOK_POST_OUTPUT": f"{url}/v2/job-done/$RUNPOD_POD_ID/$ID?gpu=test",
        "RUNPOD_WEBHOOK_POST_STREAM": f"{url}/v2/job-stream/$RUNPOD_POD_ID/$ID?gpu=test",
        # The SDK's start-up fitness checks exit the worker when "/" has under
        # RUNPOD_MIN_DISK_PERCENT (10) % free. That is a fact about this host's
        # disk, not about the worker under test, and a developer's or CI's
        # disk can be 90 % full. The check still runs; test_reliability's
        # test_a_failed_fitness_check_stops_the_worker_cleanly makes it fail.
        "RUNPOD_MIN_DISK_PERCENT": "0",
    }


class FakeRunPod:
    """RunPod's worker-facing API as runpod 1.10 calls it: job-take, job-stop,
    job-stream and job-done.

    ``hold_s`` holds job-take and job-stop open until there is something to
    say, at most that long, as RunPod's blocking calls do; the default answers
    an empty poll after a short pause, which keeps the tests' workers quick to
    stop. bench/frontend.py holds, so that idle polling does not count as the
    worker's CPU."""

    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.queue: list[dict] = []
        self.stop: list[str] = []
        self.streamed: dict[str, list] = {}
        self.done: dict[str, dict] = {}

    async def take(self, request: Request) -> Response:
        """job-take (one job) and job-take-batch (up to batch_size, as a list)."""
        if not await self._wait_for(lambda: self.queue, 0.05):
            return Response(status_code=204)
        if "batch_size" not in request.query_params:
            return JSONResponse(self.queue.pop(0))
        count = int(request.query_params["batch_size"])
        jobs, self.queue = self.queue[:count], self.queue[count:]
        return JSONResponse(jobs)

    async def stop_poll(self, request: Request) -> Response:
        if not await self._wait_for(lambda: self.stop, 0.1):
            return Response(status_code=204)
        ids, self.stop = self.stop, []
        return JSONResponse({"jobsToStop": ids})

    async def _wait_for(self, something: Callable[[], list], pause_s: float) -> bool:
        """Whether ``something`` is there: at once, after ``pause_s`` when
        nothing holds, or as soon as it comes within ``hold_s``."""
        if not self.hold_s:
            if not something():
                await asyncio.sleep(pause_s)
            return bool(something())
        deadline = asyncio.get_running_loop().time() + self.hold_s
        while not something() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        return bool(something())

    async def stream(self, request: Request) -> Response:
        self.streamed.setdefault(request.path_params["job_id"], []).append(json.loads(await request.body()))
        return JSONResponse({})

    async def finish(self, request: Request) -> Response:
        self.done[request.path_params["job_id"]] = json.loads(await request.body())
        return JSONResponse({})

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v2/job-take/{worker}", self.take),
                Route("/v2/job-take-batch/{worker}", self.take),
                Route("/v2/job-stop/{worker}", self.stop_poll),
                Route("/v2/job-stream/{worker}/{job_id}", self.stream, methods=["POST"]),
                Route("/v2/job-done/{worker}/{job_id}", self.finish, methods=["POST"]),
            ]
        )
