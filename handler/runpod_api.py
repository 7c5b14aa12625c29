"""RunPod's serverless API, as the local endpoint serves it under
``/v2/{endpoint_id}`` (any id): ``POST run``, ``POST runsync``,
``GET|POST status/{id}``, ``GET|POST stream/{id}``, ``POST cancel/{id}``,
``GET health`` and ``POST purge-queue``, over the job queue.

A refused request raises ``HTTPError``, answered ``{"error": message}`` by
the app's one exception handler (endpoint.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .errors import HTTPError
from .jobqueue import Job, JobQueue

logger = logging.getLogger(__name__)

RUNSYNC_WAIT_S = 90.0  # RunPod's default wait before /runsync answers IN_PROGRESS
RUNSYNC_MAX_WAIT_S = 300.0
WEBHOOK_ATTEMPTS = 3

# The JSON object a request carries, within RunPod's size limit for /run
# (False) or /runsync (True); raises HTTPError (400, 413) otherwise.
ReadBody = Callable[[Request, bool], Awaitable[dict[str, Any]]]


class RunPodAPI:
    def __init__(self, queue: JobQueue, read_body: ReadBody) -> None:
        self.queue = queue
        self.read_body = read_body

    def routes(self, prefix: str = "/v2/{endpoint_id}") -> list[Route]:
        return [
            Route(prefix + "/run", self.run, methods=["POST"]),
            Route(prefix + "/runsync", self.runsync, methods=["POST"]),
            Route(prefix + "/status/{job_id}", self.status, methods=["GET", "POST"]),
            Route(prefix + "/stream/{job_id}", self.stream, methods=["GET", "POST"]),
            Route(prefix + "/cancel/{job_id}", self.cancel, methods=["POST"]),
            Route(prefix + "/health", self.health, methods=["GET"]),
            Route(prefix + "/purge-queue", self.purge, methods=["POST"]),
        ]

    async def run(self, request: Request) -> Response:
        job = await self._new_job(request, sync=False)
        return JSONResponse({"id": job.id, "status": job.status})

    async def runsync(self, request: Request) -> Response:
        wait = _wait_s(request)
        job = await self._new_job(request, sync=True)
        await job.wait_done(wait)
        return JSONResponse(job.view())

    async def status(self, request: Request) -> Response:
        return JSONResponse(self._job(request).view())

    async def stream(self, request: Request) -> Response:
        job = self._job(request)
        body: dict[str, Any] = {
            "id": job.id,
            "status": job.status,
            "stream": [{"output": item} for item in job.take_stream()],
        }
        if job.error is not None:
            body["error"] = job.error
        return JSONResponse(body)

    async def cancel(self, request: Request) -> Response:
        job = self._job(request)
        self.queue.cancel(job)
        await job.wait_done(10)
        return JSONResponse({"id": job.id, "status": job.status})

    async def health(self, request: Request) -> Response:
        return JSONResponse(self.queue.health())

    async def purge(self, request: Request) -> Response:
        return JSONResponse({"removed": self.queue.purge(), "status": "completed"})

    async def _new_job(self, request: Request, sync: bool) -> Job:
        body = await self.read_body(request, sync)
        if "input" not in body:
            raise HTTPError(400, 'the request body needs an "input" field')
        policy = body.get("policy")
        if policy is not None and not isinstance(policy, dict):
            raise HTTPError(400, '"policy" must be an object such as {"executionTimeout": 60000}')
        timeout_ms = (policy or {}).get("executionTimeout")
        if timeout_ms is not None and not _positive_number(timeout_ms):
            raise HTTPError(400, "policy.executionTimeout must be a positive number of milliseconds")
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            raise HTTPError(400, '"webhook" must be a URL string')
        return self.queue.submit(
            Job(
                input=body["input"],
                webhook=webhook,
                execution_timeout_s=timeout_ms / 1000 if timeout_ms is not None else None,
            )
        )

    def _job(self, request: Request) -> Job:
        job_id = request.path_params["job_id"]
        job = self.queue.get(job_id)
        if job is None:
            raise HTTPError(404, f"job {job_id} was not found (unknown, or finished too long ago)")
        return job


def _wait_s(request: Request) -> float:
    """How long /runsync waits for the job: ``?wait=`` milliseconds, at most
    ``RUNSYNC_MAX_WAIT_S``."""
    if "wait" not in request.query_params:
        return RUNSYNC_WAIT_S
    try:
        wait = float(request.query_params["wait"]) / 1000
    except ValueError:
        wait = math.nan
    if not wait >= 0:  # NaN too
        raise HTTPError(400, "wait must be a number of milliseconds")
    return min(wait, RUNSYNC_MAX_WAIT_S)


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


async def deliver_webhook(job: Job) -> None:
    """The queue's ``on_finished``: POST the finished job to its ``webhook``."""
    if job.webhook:
        await post_webhook(job.webhook, job.view())


async def post_webhook(url: str, payload: dict[str, Any]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for attempt in range(1, WEBHOOK_ATTEMPTS + 1):
            try:
                response = await client.post(url, json=payload)
                if response.status_code < 400:
                    return
                logger.warning("webhook %s answered %s", url, response.status_code)
            except httpx.HTTPError as exc:
                logger.warning("webhook %s failed: %s", url, exc)
            await asyncio.sleep(attempt)
