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
import math
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
from .jobs import check_json
from .playground import is_page_path, local_config, page_routes
from .settings import Settings

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
    """The request body cannot be read as a job: too large (413), not UTF-8,
    not JSON, not an object, or nested too deeply (400)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _body(request: Request, limit: int, limit_name: str, max_depth: int) -> dict[str, Any]:
    """The JSON object a request carries, read up to ``limit`` bytes: a larger
    body is refused with 413, as RunPod refuses it, before it is all read."""
    too_large = BadRequest(f"the request body is larger than {limit} bytes ({limit_name})", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    if not raw:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(
            f"the request body is not valid UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    try:
        body = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        raise BadRequest(
            f"the request body nests arrays and objects deeper than {max_depth} levels (MAX_JSON_DEPTH)"
        ) from None
    except ValueError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    try:  # each field counted as the worker counts a job input
        for key, value in body.items():
            check_json(value, max_depth, ("body", key), text=False)
    except JobError as exc:
        raise BadRequest(exc.message) from None
    return body


def _not_json(constant: str) -> Any:
    """Python reads NaN and Infinity; JSON (and RunPod) does not."""
    raise ValueError(f"{constant} is not a JSON value")


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
    def __init__(self, queue: JobQueue, settings: Settings | None = None) -> None:
        self.queue = queue
        self.settings = settings or Settings.from_env()
        queue.on_finished = self._finished

    async def _finished(self, job: Job) -> None:
        if job.webhook:
            await post_webhook(job.webhook, job.view())

    # -- native RunPod API ---------------------------------------------------

    async def _read(self, request: Request, sync: bool) -> dict[str, Any]:
        """The request's JSON body within the size limit RunPod sets for the
        route: /run's, or /runsync's for the routes that wait for the answer."""
        if sync:
            limit, name = self.settings.max_runsync_bytes, "RunPod's limit for /runsync: MAX_RUNSYNC_BYTES"
        else:
            limit, name = self.settings.max_run_bytes, "RunPod's limit for /run: MAX_RUN_BYTES"
        return await _body(request, limit, name, self.settings.max_json_depth)

    async def _new_job(self, request: Request, sync: bool) -> Job | JSONResponse:
        try:
            body = await self._read(request, sync)
        except BadRequest as exc:
            return error(exc.status, str(exc))
        if "input" not in body:
            return error(400, 'the request body needs an "input" field')
        policy = body.get("policy")
        if policy is not None and not isinstance(policy, dict):
            return error(400, '"policy" must be an object such as {"executionTimeout": 60000}')
        timeout_ms = (policy or {}).get("executionTimeout")
        if timeout_ms is not None and not _positive_number(timeout_ms):
            return error(400, "policy.executionTimeout must be a positive number of milliseconds")
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            return error(400, '"webhook" must be a URL string')
        return self.queue.submit(
            Job(
                input=body["input"],
                webhook=webhook,
                execution_timeout_s=timeout_ms / 1000 if timeout_ms is not None else None,
            )
        )

    async def run(self, request: Request) -> Response:
        job = await self._new_job(request, sync=False)
        if isinstance(job, JSONResponse):
            return job
        return JSONResponse({"id": job.id, "status": job.status})

    async def runsync(self, request: Request) -> Response:
        wait = RUNSYNC_WAIT_S
        if "wait" in request.query_params:
            try:
                wait = float(request.query_params["wait"]) / 1000
            except ValueError:
                wait = math.nan
            if not wait >= 0:  # NaN too
                return error(400, "wait must be a number of milliseconds")
            wait = min(wait, RUNSYNC_MAX_WAIT_S)
        job = await self._new_job(request, sync=True)
        if isinstance(job, JSONResponse):
            return job
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
            body = await self._read(request, sync=True)
        except BadRequest as exc:
            return JSONResponse(JobError(str(exc), exc.status).body(), status_code=exc.status)
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

        async def internal(request: Request, exc: Exception) -> Response:
            # logged by uvicorn; the client gets JSON, never a traceback
            return error(500, f"internal error: {type(exc).__name__}")

        return Starlette(
            routes=routes,
            middleware=[Middleware(BearerAuth, api_key=api_key)],
            exception_handlers={404: not_found, 405: not_allowed, Exception: internal},
        )


async def serve(worker: Any, host: str, port: int, api_key: str | None) -> None:
    """Run the local endpoint until interrupted. The engine starts booting at
    once, so the first job does not wait for all of it."""
    import uvicorn

    queue = JobQueue(worker.handle, worker.concurrency())
    endpoint = LocalEndpoint(queue, worker.settings)
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


def _positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


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
