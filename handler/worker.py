"""The RunPod handler: one job in, streamed items out.

Every job, native or OpenAI, becomes one request to vLLM's OpenAI app running
in this process (see ``engine.py``). Errors are yielded as
``{"error": "<JSON text>"}`` so the job fails with a parseable error and the
worker keeps serving; a cancelled job cancels its in-memory request, which
makes vLLM abort the generation.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from . import asgi, jobs, native, routes
from .engine import Engine
from .errors import JobError
from .settings import Settings
from .streaming import batched, carries_text, sse_events

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        self.engine = engine
        self.settings = settings or engine.settings
        self.streaming = 0  # jobs streaming now

    def concurrency(self, current: int = 0) -> int:
        """runpod's ``concurrency_modifier``: how many jobs run at once."""
        return self.settings.max_concurrency

    async def handle(self, job: dict[str, Any]) -> AsyncIterator[Any]:
        """The async-generator handler given to ``runpod.serverless.start``."""
        try:
            async for item in self._handle(job):
                yield item
        except JobError as error:
            yield {"error": error.to_json()}
        except Exception as error:  # noqa: BLE001 - a job never takes the worker down
            logger.exception("job %s failed", job.get("id") if isinstance(job, dict) else None)
            yield {"error": JobError(f"{type(error).__name__}: {error}", status=500).to_json()}

    async def _handle(self, job: dict[str, Any]) -> AsyncIterator[Any]:
        if not isinstance(job, dict) or "input" not in job:
            raise JobError('the job has no "input"', param="input")
        parsed = jobs.parse(job["input"], self.settings.max_json_depth)
        ready = await self.engine.start()
        if isinstance(parsed, jobs.NativeJob):
            route, body = native.to_request(parsed, ready.served_model)
            if native.needs_context_budget(route, body):
                counted = await self._call("POST", "/tokenize", native.tokenize_request(body))
                body["max_tokens"] = native.rest_of_context(json.loads(await counted.read()))
            response = await self._call("POST", route, body)
            if parsed.stream:
                async for item in self._native_stream(response):
                    yield item
            else:
                yield native.from_response(json.loads(await response.read()))
            return
        method, route, payload = parsed.request()
        path, template = routes.resolve(ready.app, method, route, parsed.route_field)
        jobs.check_body(ready.app, method, template, payload, ("input", parsed.body_field))
        response = await self._call(method, path, payload)
        async for item in self._openai_output(response):
            yield item

    async def _call(self, method: str, path: str, body: Any) -> asgi.Response:
        response = await self.engine.request(method, path, body)
        if response.status >= 400:
            payload = await response.read()
            self.engine.check_alive()
            raise JobError.from_response(response.status, payload)
        return response

    def _batches(self, source: Any, urgent_until: Any) -> Any:
        return batched(source, self.settings.stream_batch_max_events, self.batch_delay_s, urgent_until=urgent_until)

    def batch_delay_s(self) -> float:
        """How long a batch's oldest event may wait: ``STREAM_BATCH_MAX_MS``,
        or longer when so many jobs stream at once that their batches would
        come more often than ``STREAM_BATCHES_PER_S`` in all."""
        shortest = self.settings.stream_batch_max_ms / 1000
        rate = self.settings.stream_batches_per_s
        return max(shortest, self.streaming / rate) if rate else shortest

    @contextlib.contextmanager
    def _counted_stream(self) -> Iterator[None]:
        self.streaming += 1
        try:
            yield
        finally:
            self.streaming -= 1

    async def _openai_output(self, response: asgi.Response) -> AsyncIterator[Any]:
        """An OpenAI answer as job output: batches of whole SSE events as text,
        a JSON object, or text for other content types (such as /metrics)."""
        if not response.is_event_stream:
            payload = await response.read()
            yield json.loads(payload) if response.is_json else payload.decode("utf-8", "replace")
            return
        batches = self._batches(sse_events(response), carries_text)
        try:
            with self._counted_stream():
                async for events in batches:
                    yield "".join(events)
        finally:
            await batches.aclose()
            await response.aclose()

    async def _native_stream(self, response: asgi.Response) -> AsyncIterator[dict[str, Any]]:
        deltas = native.stream_deltas(sse_events(response))
        batches = self._batches(deltas, lambda delta: any(any(c["tokens"]) for c in delta["choices"]))
        try:
            with self._counted_stream():
                async for group in batches:
                    yield native.merge(group)
        finally:
            await batches.aclose()
            await response.aclose()
        self.engine.check_alive()
