"""The local endpoint's OpenAI API: a request to ``/openai/v1/...`` (under
``/v2/{endpoint_id}``, or without it, or as ``/v1/...``) becomes an
``openai_route`` job, answered as the plain HTTP response or, for
``"stream": true``, as a real incremental SSE stream, as ``vllm serve``
answers it.

A body that cannot be read is refused with ``JobError``, vLLM's error shape.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from .errors import HTTPError, JobError
from .jobqueue import COMPLETED, FAILED, Job, JobQueue

PREFIXES = ("/v2/{endpoint_id}/openai/v1", "/openai/v1", "/v1")
METHODS = ["GET", "POST", "DELETE"]

# The request's JSON object within RunPod's /runsync size limit; raises HTTPError otherwise.
ReadBody = Callable[[Request], Awaitable[dict[str, Any]]]


class OpenAIProxy:
    def __init__(self, queue: JobQueue, read_body: ReadBody) -> None:
        self.queue = queue
        self.read_body = read_body

    def routes(self) -> list[Route]:
        return [Route(prefix + "/{path:path}", self.handle, methods=METHODS) for prefix in PREFIXES]

    async def handle(self, request: Request) -> Response:
        try:
            body = await self.read_body(request)
        except HTTPError as exc:
            raise JobError(exc.message, exc.status) from None
        job_input: dict[str, Any] = {"openai_route": "/v1/" + request.path_params["path"]}
        if body:
            job_input["openai_input"] = body
        job = self.queue.submit(Job(input=job_input))
        streamed = body.get("stream") is True
        try:
            # a stream's status line waits for its first events, so that a
            # request vLLM rejects gets vLLM's status, as from `vllm serve`
            while not (job.done or (streamed and job.items)):
                await job.wait_change()
        except asyncio.CancelledError:
            self.queue.cancel(job)
            raise
        if streamed and job.items:
            return StreamingResponse(self._sse(job), media_type="text/event-stream")
        return openai_response(job)

    async def _sse(self, job: Job) -> AsyncIterator[str]:
        sent = 0
        try:
            while True:
                while sent < len(job.items):
                    item = job.items[sent]
                    sent += 1
                    yield item if isinstance(item, str) else f"data: {json.dumps(item)}\n\n"
                if job.done:
                    break
                await job.wait_change()
            if job.status == FAILED and job.error:
                yield f"data: {_error_text(job.error)}\n\n"
        finally:
            if not job.done:  # the client went away: stop generating
                self.queue.cancel(job)


def openai_response(job: Job) -> Response:
    """A finished OpenAI job as the HTTP response vLLM's server would give."""
    if job.status == COMPLETED:
        if len(job.items) == 1 and isinstance(job.items[0], (dict, list)):
            return JSONResponse(job.items[0])
        if all(isinstance(item, str) for item in job.items):
            return PlainTextResponse("".join(job.items))
        return JSONResponse(job.items)
    text = _error_text(job.error or f"the job ended {job.status}")
    code = json.loads(text)["error"].get("code") or 500
    return Response(text, status_code=int(code), media_type="application/json")


def _error_text(job_error: str) -> str:
    """A job error as the JSON body of an OpenAI error."""
    try:
        parsed = json.loads(job_error)
        if isinstance(parsed, dict) and "error" in parsed:
            return job_error
    except ValueError:
        pass
    return JobError(job_error, status=HTTPStatus.INTERNAL_SERVER_ERROR).to_json()
