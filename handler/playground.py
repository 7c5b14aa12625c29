"""The chat playground: a static page (``handler/static/``, no build step,
nothing fetched from a CDN) that talks to an OpenAI-compatible API at ``/v1``
on the server that served it.

- The local endpoint (``python -m handler serve``) serves it at ``/`` and
  ``/playground``; the page calls the endpoint's own ``/v1`` routes.
- ``python -m handler playground --endpoint ID`` (or ``--url BASE``) serves
  the same page beside a proxy: ``GET /v1/models`` and
  ``POST /v1/chat/completions`` are forwarded to
  ``https://api.runpod.ai/v2/ID/openai/v1`` (or ``BASE``) with the API key
  from the environment added on the way. The key never reaches the browser:
  not in the page, its settings, nor any response.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .errors import HTTPError, answer_http_error

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
PAGE_PATHS = ("/", "/playground")
RUNPOD_API = "https://api.runpod.ai/v2"
# the only calls the page makes, and so the only ones the proxy forwards
PROXIED = {("GET", "models"), ("POST", "chat/completions")}
UPSTREAM_TIMEOUT = httpx.Timeout(30.0, read=600.0)  # a cold RunPod worker can take minutes
ENDPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
RUNPOD_OPENAI_URL = re.compile(r"https://api\.runpod\.ai/v2/([A-Za-z0-9_-]+)/openai/v1")


class PlaygroundError(ValueError):
    """A bad ``playground`` argument; the message names it."""


def is_page_path(path: str) -> bool:
    """The page, its files and its settings: public, they hold no secret."""
    return path in PAGE_PATHS or path.startswith("/playground/")


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "playground.html", headers={"Cache-Control": "no-cache"})


def page_routes(config: Any) -> list[BaseRoute]:
    """The page at ``/`` and ``/playground``, its files, and
    ``/playground/config.json``: ``config(request)`` gives the settings
    "copy as code" needs (where the API is, how code finds the key)."""

    async def settings(request: Request) -> Response:
        return JSONResponse(config(request), headers={"Cache-Control": "no-store"})

    return [
        *(Route(path, _page, methods=["GET"]) for path in PAGE_PATHS),
        Route("/playground/config.json", settings, methods=["GET"]),
        Mount("/playground/static", StaticFiles(directory=STATIC_DIR), name="playground-static"),
    ]


def local_config(auth: bool) -> Any:
    """Settings for the page served by the local endpoint itself."""

    def config(request: Request) -> dict[str, Any]:
        base = str(request.base_url).rstrip("/")
        key = {"key_env": "LOCAL_API_KEY" if auth else None, "key": "local"}
        return {
            "target": "the local endpoint",
            "auth": auth,
            "openai": {"base": f"{base}/v2/local/openai/v1", **key},
            "runpod": {"url_base": f"{base}/v2", "endpoint_id": "local", **key},
        }

    return config


@dataclass(frozen=True)
class Upstream:
    """Where the proxy forwards to, and the key it adds (never shown)."""

    base_url: str
    api_key: str | None
    key_env: str
    endpoint_id: str | None

    def __repr__(self) -> str:  # keep the key out of any log or traceback
        return f"Upstream(base_url={self.base_url!r}, key_env={self.key_env!r})"

    def config(self, request: Request) -> dict[str, Any]:
        return {
            "target": f"RunPod endpoint {self.endpoint_id}" if self.endpoint_id else self.base_url,
            "auth": False,  # the proxy adds the key
            "openai": {"base": self.base_url, "key_env": self.key_env if self.api_key else None, "key": "EMPTY"},
            "runpod": {"url_base": None, "endpoint_id": self.endpoint_id, "key_env": "RUNPOD_API_KEY", "key": ""},
        }


def upstream(
    endpoint: str | None, url: str | None, key_env: str = "RUNPOD_API_KEY", environ: Mapping[str, str] | None = None
) -> Upstream:
    """The proxy's target from ``--endpoint ID`` or ``--url BASE``; the key is
    read from ``key_env`` (required for a RunPod endpoint)."""
    env: Mapping[str, str] = os.environ if environ is None else environ
    key = env.get(key_env) or None
    if (endpoint is None) == (url is None):
        raise PlaygroundError("give exactly one of --endpoint ENDPOINT_ID or --url BASE_URL")
    if endpoint is not None:
        if not ENDPOINT_ID.fullmatch(endpoint):
            raise PlaygroundError(f"--endpoint {endpoint!r} is not a RunPod endpoint id (letters, digits, - and _)")
        if not key:
            raise PlaygroundError(f"set {key_env} to your RunPod API key: the playground sends it to RunPod for you")
        return Upstream(f"{RUNPOD_API}/{endpoint}/openai/v1", key, key_env, endpoint)
    assert url is not None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PlaygroundError(f"--url {url!r} is not an http(s) URL such as https://ENDPOINT_ID.api.runpod.ai/v1")
    base = url.rstrip("/")
    if not key and (parts.hostname or "").endswith("runpod.ai"):
        raise PlaygroundError(f"set {key_env} to your RunPod API key: RunPod's endpoints need it")
    match = RUNPOD_OPENAI_URL.fullmatch(base)
    return Upstream(base, key, key_env, match.group(1) if match else None)


class ProxyRefusal(HTTPError):
    """A request the proxy does not forward, or cannot."""

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": "PlaygroundError", "code": self.status}}


def _same_origin(request: Request) -> bool:
    """A browser on another site may not spend the key: its requests carry
    an ``Origin`` that is not this server."""
    origin = request.headers.get("origin")
    return origin is None or urlsplit(origin).netloc == request.headers.get("host")


def proxy_routes(target: Upstream, client: httpx.AsyncClient) -> list[BaseRoute]:
    async def forward(request: Request) -> Response:
        path = request.path_params["path"]
        if (request.method, path) not in PROXIED:
            raise ProxyRefusal(404, "the playground forwards only GET /v1/models and POST /v1/chat/completions")
        if not _same_origin(request):
            raise ProxyRefusal(403, "requests from another site are not forwarded")
        headers = {"Accept": request.headers.get("accept", "*/*"), "Accept-Encoding": "identity"}
        if request.method == "POST":
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                raise ProxyRefusal(415, "send the request body as application/json")
            headers["Content-Type"] = "application/json"
        if target.api_key:
            headers["Authorization"] = f"Bearer {target.api_key}"
        outgoing = client.build_request(
            request.method, f"{target.base_url}/{path}", content=await request.body(), headers=headers
        )
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.HTTPError as exc:
            raise ProxyRefusal(502, f"cannot reach {target.base_url}: {type(exc).__name__} {exc}".strip()) from None
        return StreamingResponse(
            _relay(answer),
            status_code=answer.status_code,
            media_type=answer.headers.get("content-type", "application/json"),
            headers={"Cache-Control": "no-store"},
        )

    return [Route("/v1/{path:path}", forward, methods=["GET", "POST"])]


async def _relay(answer: httpx.Response) -> AsyncIterator[bytes]:
    """The upstream body as it arrives; closing it when the browser goes
    away (a stop) closes the upstream stream, which ends the generation."""
    try:
        async for chunk in answer.aiter_bytes():
            yield chunk
    except httpx.HTTPError as exc:
        logger.warning("the upstream stream broke: %s", type(exc).__name__)
    finally:
        await answer.aclose()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_app(target: Upstream, host: str = "127.0.0.1") -> Starlette:
    """The page and the proxy. Bound to a loopback address, it answers only
    to loopback host names, so a web page cannot reach it by DNS rebinding."""
    client = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await client.aclose()

    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"] if _loopback(host) else ["*"]
    return Starlette(
        routes=[*page_routes(target.config), *proxy_routes(target, client)],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=hosts)],
        exception_handlers={HTTPError: answer_http_error},
        lifespan=lifespan,
    )


def serve(target: Upstream, host: str, port: int) -> None:
    import uvicorn

    logger.info(
        "playground on http://%s:%s -> %s%s",
        host,
        port,
        target.base_url,
        f" (key from {target.key_env})" if target.api_key else " (no API key)",
    )
    uvicorn.run(proxy_app(target, host), host=host, port=port, log_level="info")
