"""A small in-memory ASGI client that streams.

It calls vLLM's FastAPI app the way uvicorn would, without a socket, and hands
the response body over piece by piece as the app sends it (httpx's
ASGITransport buffers whole responses, so it cannot stream). When the caller
stops reading (a cancelled job), the app is told the client disconnected and
its task is cancelled, which makes vLLM abort the request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

ASGIApp = Callable[..., Awaitable[None]]
# Seconds an app gets to end by itself after a disconnect before its task is cancelled.
CANCEL_GRACE_S = 0.25


def _cancel(task: asyncio.Task) -> None:
    if not task.done():
        task.cancel()


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    _chunks: AsyncIterator[bytes] = field(repr=False)
    _stop: Callable[[], Awaitable[None]] = field(repr=False)

    @property
    def is_json(self) -> bool:
        return "json" in self.headers.get("content-type", "")

    @property
    def is_event_stream(self) -> bool:
        return self.headers.get("content-type", "").startswith("text/event-stream")

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self._chunks])

    async def aclose(self) -> None:
        """Stop reading: the app sees a disconnect and its task is cancelled."""
        await self._stop()


async def request(
    app: ASGIApp,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Send one HTTP request to ``app``; returns once the status line is known.

    ``body`` is JSON-encoded unless it is ``bytes``. The returned response must
    be read to the end or closed (``aclose``); either finishes the app's task.
    """
    payload = body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
    is_json = body is not None and not isinstance(body, bytes)
    exchange = _Exchange(app, _scope(method, path, payload, is_json, headers or {}), payload)
    return await exchange.response()


def _scope(method: str, path: str, payload: bytes, is_json: bool, headers: Mapping[str, str]) -> dict[str, Any]:
    """The HTTP scope uvicorn would give the app for this request."""
    parts = urlsplit(path)
    header_list = [(b"host", b"worker")]
    if is_json:
        header_list.append((b"content-type", b"application/json"))
    header_list.append((b"content-length", str(len(payload)).encode()))
    for key, value in headers.items():
        header_list.append((key.lower().encode(), value.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method.upper(),
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": header_list,
        "client": ("127.0.0.1", 0),
        "server": ("worker", 80),
        "state": {},
    }


class _Exchange:
    """One request in flight: the app's task, the messages it sends, and the
    disconnect the caller causes by closing the response early."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any], payload: bytes) -> None:
        self.payload = payload
        self.sent_body = False
        self.disconnected = asyncio.Event()
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(app, scope))
        self.body = self._chunks()

    async def response(self) -> Response:
        """The response, once the app has sent its status line."""
        try:
            start = await self.messages.get()
        except asyncio.CancelledError:
            self._stop()
            raise
        if start["type"] != "http.response.start":
            self._stop()
            error = start.get("error")
            raise RuntimeError(f"the app answered no response: {error!r}") from error
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in start.get("headers", [])}
        return Response(start["status"], headers, self.body, self._close)

    async def _receive(self) -> dict[str, Any]:
        if not self.sent_body:
            self.sent_body = True
            return {"type": "http.request", "body": self.payload, "more_body": False}
        await self.disconnected.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        await self.messages.put(message)

    async def _run(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        try:
            await app(scope, self._receive, self._send)
        except Exception as error:  # noqa: BLE001 - the app failed before or while answering: the reader gets it
            await self.messages.put({"type": "app.error", "error": error})
        finally:
            await self.messages.put({"type": "app.done"})

    def _stop(self) -> None:
        """Disconnect, as uvicorn does when a client goes away: vLLM's handlers
        notice it and abort the request. A task that has not ended after a
        short grace period is cancelled outright."""
        self.disconnected.set()
        if not self.task.done():
            asyncio.get_running_loop().call_later(CANCEL_GRACE_S, _cancel, self.task)

    async def _finish(self, abort: bool) -> None:
        if abort:
            self._stop()
        await asyncio.gather(self.task, return_exceptions=True)

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        complete = False
        try:
            while True:
                message = await self.messages.get()
                kind = message["type"]
                if kind == "http.response.body":
                    data = message.get("body", b"")
                    if data:
                        yield data
                    if not message.get("more_body", False):
                        complete = True
                        return
                elif kind == "app.error":
                    raise message["error"]
                elif kind == "app.done":
                    complete = True
                    return
        finally:
            await self._finish(abort=not complete)

    async def _close(self) -> None:
        await self.body.aclose()
        await self._finish(abort=True)
