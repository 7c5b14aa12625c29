"""The local endpoint: RunPod's serverless API, served on this machine in
front of the real handler, so code written against it works unchanged on
RunPod (the runpod SDK with ``runpod.endpoint_url_base``, the OpenAI SDK with
``base_url=http://127.0.0.1:8000/v2/local/openai/v1``).

This module assembles the app: RunPod's routes (runpod_api.py), the OpenAI
proxy (openai_proxy.py), the chat playground (playground.py, at ``/`` and
``/playground``), the API key check, the request body reader with RunPod's
limits, and the one handler that answers a raised ``HTTPError``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import HTTPError, JobError, answer_http_error
from .jobqueue import JobQueue
from .jobs import check_json
from .openai_proxy import OpenAIProxy
from .playground import is_page_path, local_config, page_routes
from .runpod_api import RunPodAPI, deliver_webhook
from .settings import Settings

logger = logging.getLogger(__name__)


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
                refusal = HTTPError(401, "Unauthorized: send Authorization: Bearer <api key>")
                await refusal.response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _body(request: Request, limit: int, limit_name: str, max_depth: int) -> dict[str, Any]:
    """The JSON object a request carries, read up to ``limit`` bytes: a larger
    body is refused with 413, as RunPod refuses it, before it is all read.
    Anything else that is not a JSON object of at most ``max_depth`` levels
    (not UTF-8, not JSON, too deep) is refused with 400."""
    too_large = HTTPError(413, f"the request body is larger than {limit} bytes ({limit_name})")
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
        where = f"byte 0x{raw[exc.start]:02x} at offset {exc.start}"
        raise HTTPError(400, f"the request body is not valid UTF-8 ({where})") from None
    try:
        body = json.loads(text, parse_constant=_not_json)
    except RecursionError:
        deeper = f"deeper than {max_depth} levels (MAX_JSON_DEPTH)"
        raise HTTPError(400, f"the request body nests arrays and objects {deeper}") from None
    except ValueError as exc:
        raise HTTPError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object")
    try:  # each field counted as the worker counts a job input
        for key, value in body.items():
            check_json(value, max_depth, ("body", key), values=False)
    except JobError as exc:
        raise HTTPError(400, exc.message) from None
    return body


def _not_json(constant: str) -> Any:
    """Python reads NaN and Infinity; JSON (and RunPod) does not."""
    raise ValueError(f"{constant} is not a JSON value")


class LocalEndpoint:
    """The app over ``queue``. A job's ``webhook`` is posted by the queue's
    ``on_finished`` callback: build the queue with ``runpod_api.deliver_webhook``."""

    def __init__(self, queue: JobQueue, settings: Settings | None = None) -> None:
        self.queue = queue
        self.settings = settings or Settings.from_env()
        self.runpod = RunPodAPI(queue, self._read)
        self.openai = OpenAIProxy(queue, functools.partial(self._read, sync=True))

    async def _read(self, request: Request, sync: bool) -> dict[str, Any]:
        """The request's JSON body within the size limit RunPod sets for the
        route: /run's, or /runsync's for the routes that wait for the answer."""
        if sync:
            limit, name = self.settings.max_runsync_bytes, "RunPod's limit for /runsync: MAX_RUNSYNC_BYTES"
        else:
            limit, name = self.settings.max_run_bytes, "RunPod's limit for /run: MAX_RUN_BYTES"
        return await _body(request, limit, name, self.settings.max_json_depth)

    def app(self, api_key: str | None = None) -> Starlette:
        routes = [
            *self.runpod.routes(),
            *page_routes(local_config(auth=bool(api_key))),
            *self.openai.routes(),
        ]
        return Starlette(
            routes=routes,
            middleware=[Middleware(BearerAuth, api_key=api_key)],
            exception_handlers={
                HTTPError: answer_http_error,
                404: _not_found,
                405: _not_allowed,
                Exception: _internal,
            },
        )


async def _not_found(request: Request, exc: Exception) -> Response:
    return HTTPError(404, f"no route {request.method} {request.url.path}").response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    return HTTPError(405, f"{request.url.path} does not take {request.method}").response()


async def _internal(request: Request, exc: Exception) -> Response:
    # logged by uvicorn; the client gets JSON, never a traceback
    return HTTPError(500, f"internal error: {type(exc).__name__}").response()


async def serve(worker: Any, host: str, port: int, api_key: str | None) -> None:
    """Run the local endpoint until interrupted. The engine starts booting at
    once, so the first job does not wait for all of it."""
    import uvicorn

    queue = JobQueue(worker.handle, worker.concurrency(), on_finished=deliver_webhook)
    endpoint = LocalEndpoint(queue, worker.settings)
    queue.start()
    boot = asyncio.create_task(worker.engine.start())
    boot.add_done_callback(lambda task: task.cancelled() or task.exception())
    config = uvicorn.Config(endpoint.app(api_key), host=host, port=port, log_level="info")
    logger.info(
        "local endpoint on http://%s:%s/v2/local (OpenAI: /v2/local/openai/v1, playground: /)%s",
        host,
        port,
        ", API key required" if api_key else "",
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await queue.stop()
        await worker.engine.shutdown()
