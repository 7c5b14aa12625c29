"""The local endpoint: RunPod's serverless API, served on this machine in
front of the real handler, so code written against it works unchanged on
RunPod (the runpod SDK with ``runpod.endpoint_url_base``, the OpenAI SDK with
``base_url=http://127.0.0.1:8000/v2/local/openai/v1``).

Routes, under ``/v2/{endpoint_id}`` (any id):

- ``POST run``, ``POST runsync``, ``GET|POST status/{id}``, ``GET|POST stream/{id}``,
  ``POST cancel/{id}``, ``GET health``, ``POST purge-queue``;
- ``/openai/v1/...``: an ``openai_route`` job, answered as a plain HTTP response
  or, for ``"stream": true``, as a real incremental SSE stream. The OpenAI
  paths also work without the ``/v2/{endpoint_id}`` prefix.

The chat playground (playground.py) is served at ``/`` and ``/playground``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from http import HTTPStatus
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import JobError
from .jobqueue import COMPLETED, FAILED, Job, JobQueue
from .playground import is_page_path, local_config, page_routes

logger = logging.getLogger(__name__)

RUNSYNC_WAIT_S = 90.0  # RunPod's default wait before /runsync answers IN_PROGRESS
RUNSYNC_MAX_WAIT_S = 300.0
WEBHOOK_ATTEMPTS = 3


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BearerAuth:
    """Every request must carry ``Authorization: Bearer <key>`` when a key is
    set, except for the playground's page and files (the page asks for the key)."""

    def __init__(self, app: ASGIApp, api_key: str | None) -> None:
        self.app = app
        self.api_key = api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.api_key and not is_page_path(scope["path"]):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not secrets.compare_digest(given, f"Bearer {self.api_key}"):
                await error(401, "Unauthorized: send Authorization: Bearer <api key>")(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BadRequest(Exception):
    """The request body is not a JSON object."""


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


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


class LocalEndpoint:
    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue
        queue.on_finished = self._finished

    async def _finished(self, job: Job) -> None:
        if job.webhook:
            await post_webhook(job.webhook, job.view())

    # -- native RunPod API ---------------------------------------------------

    async def _new_job(self, request: Request) -> Job | JSONResponse:
        try:
            body = await _body(request)
        except BadRequest as exc:
            return error(400, str(exc))
        if "input" not in body:
            return error(400, 'the request body needs an "input" field')
        policy = body.get("policy") or {}
        timeout_ms = policy.get("executionTimeout") if isinstance(policy, dict) else None
        return self.queue.submit(
            Job(
                input=body["input"],
                webhook=body.get("webhook"),
                execution_timeout_s=timeout_ms / 1000 if isinstance(timeout_ms, (int, float)) else None,
            )
        )

    async def run(self, request: Request) -> Response:
        job = await self._new_job(request)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse({"id": job.id, "status": job.status})

    async def runsync(self, request: Request) -> Response:
        job = await self._new_job(request)
        if isinstance(job, JSONResponse):
            return job
        wait = RUNSYNC_WAIT_S
        if "wait" in request.query_params:
            try:
                wait = min(float(request.query_params["wait"]) / 1000, RUNSYNC_MAX_WAIT_S)
            except ValueError:
                return error(400, "wait must be a number of milliseconds")
        await job.wait_done(wait)
        return JSONResponse(job.view())

    def _job(self, request: Request) -> Job | JSONResponse:
        job_id = request.path_params["job_id"]
        job = self.queue.get(job_id)
        if job is None:
            return error(404, f"job {job_id} was not found (unknown, or finished too long ago)")
        return job

    async def status(self, request: Request) -> Response:
        job = self._job(request)
        return job if isinstance(job, JSONResponse) else JSONResponse(job.view())

    async def stream(self, request: Request) -> Response:
        job = self._job(request)
        if isinstance(job, JSONResponse):
            return job
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
        if isinstance(job, JSONResponse):
            return job
        self.queue.cancel(job)
        await job.wait_done(10)
        return JSONResponse({"id": job.id, "status": job.status})

    async def health(self, request: Request) -> Response:
        return JSONResponse(self.queue.health())

    async def purge(self, request: Request) -> Response:
        return JSONResponse({"removed": self.queue.purge(), "status": "completed"})

    # -- OpenAI ----------------------------------------------------------------

    async def openai(self, request: Request) -> Response:
        try:
            body = await _body(request)
        except BadRequest as exc:
            return JSONResponse(JobError(str(exc)).body(), status_code=400)
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

    def app(self, api_key: str | None = None) -> Starlette:
        native = [
            Route("/run", self.run, methods=["POST"]),
            Route("/runsync", self.runsync, methods=["POST"]),
            Route("/status/{job_id}", self.status, methods=["GET", "POST"]),
            Route("/stream/{job_id}", self.stream, methods=["GET", "POST"]),
            Route("/cancel/{job_id}", self.cancel, methods=["POST"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/purge-queue", self.purge, methods=["POST"]),
        ]
        openai_methods = ["GET", "POST", "DELETE"]
        routes = [Route("/v2/{endpoint_id}" + r.path, r.endpoint, methods=list(r.methods or ())) for r in native]
        routes += page_routes(local_config(auth=bool(api_key)))
        for prefix in ("/v2/{endpoint_id}/openai/v1", "/openai/v1", "/v1"):
            routes.append(Route(prefix + "/{path:path}", self.openai, methods=openai_methods))

        async def not_found(request: Request, exc: Exception) -> Response:
            return error(404, f"no route {request.method} {request.url.path}")

        async def not_allowed(request: Request, exc: Exception) -> Response:
            return error(405, f"{request.url.path} does not take {request.method}")

        return Starlette(
            routes=routes,
            middleware=[Middleware(BearerAuth, api_key=api_key)],
            exception_handlers={404: not_found, 405: not_allowed},
        )


async def serve(worker: Any, host: str, port: int, api_key: str | None) -> None:
    """Run the local endpoint until interrupted. The engine starts booting at
    once, so the first job does not wait for all of it."""
    import uvicorn

    queue = JobQueue(worker.handle, worker.concurrency())
    endpoint = LocalEndpoint(queue)
    queue.start()
    boot = asyncio.create_task(worker.engine.start())
    boot.add_done_callback(lambda task: task.cancelled() or task.exception())
    config = uvicorn.Config(endpoint.app(api_key), host=host, port=port, log_level="info")
    logger.info(
        "local endpoint on http://%s:%s/v2/local (OpenAI: /v2/local/openai/v1, playground: /)%s",
        host, port, ", API key required" if api_key else "",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await queue.stop()
        await worker.engine.shutdown()


def _error_text(job_error: str) -> str:
    """A job error as the JSON body of an OpenAI error."""
    try:
        parsed = json.loads(job_error)
        if isinstance(parsed, dict) and "error" in parsed:
            return job_error
    except ValueError:
        pass
    return JobError(job_error, status=HTTPStatus.INTERNAL_SERVER_ERROR).to_json()


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
