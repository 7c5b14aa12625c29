"""Load-balancing mode: vLLM's own OpenAI app served over HTTP, for RunPod's
load-balancing endpoints (``https://ENDPOINT_ID.api.runpod.ai/<path>``).

RunPod routes HTTP straight to the worker's server on ``PORT`` and asks
``/ping`` on ``PORT_HEALTH`` whether to send traffic: 204 while the worker
initializes, 200 once it serves, anything else when it is unhealthy.

The app served is the one the engine builds in every mode (``Ready.app``:
vLLM's ``build_app`` + ``init_app_state``), called as the ASGI app it is. In
front of it, ``Front`` owns only what has to exist before it does or outside
it: ``/ping`` from process start, requests that wait for the boot, and the
``MAX_CONCURRENCY`` bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from argparse import Namespace
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from . import event_loop
from .errors import ConfigError, HTTPError, JobError
from .settings import Settings

if TYPE_CHECKING:  # importing them imports vLLM, which the mode does after opening its ports
    from .engine import Engine, Ready
    from .flags import EngineConfig

# Imports vLLM and reads the flags; returns the engine (not booted) and its configuration.
Loader = Callable[[], "tuple[Engine, EngineConfig]"]
# Runs beside the engine from its boot on (node 0 of a group: the other nodes' links, cluster.py).
Watch = Callable[["Engine"], Coroutine[Any, Any, None]]

logger = logging.getLogger(__name__)

HEALTH_PATH = "/ping"
RUNPOD_PORT = 80  # RunPod's default PORT for load-balancing workers
LOCAL_PORT = 8000  # vLLM's default --port
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class Listen:
    """Where the mode listens: the app on ``port``, ``/ping`` also on ``health_port``."""

    host: str
    port: int
    health_port: int


def listen_address(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    local: bool,
    host: str | None = None,
    port: int | None = None,
    health_port: int | None = None,
) -> Listen:
    """``HOST`` and ``PORT`` are the same variables as vLLM's ``--host`` and
    ``--port``, read here before vLLM is imported so the port is open from
    process start. On RunPod an unset ``PORT`` is RunPod's default 80 and the
    host is every interface; locally (``python -m handler http``) they are
    vLLM's 8000 and 127.0.0.1. ``PORT_HEALTH`` defaults to the app's port."""
    chosen_port = port or _port(environ) or (LOCAL_PORT if local else RUNPOD_PORT)
    chosen_host = host or environ.get("HOST") or ("127.0.0.1" if local else "0.0.0.0")
    return Listen(chosen_host, chosen_port, health_port or settings.port_health or chosen_port)


def _port(environ: Mapping[str, str]) -> int | None:
    value = environ.get("PORT", "")
    if value == "":
        return None
    if not value.strip().isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"PORT={value!r} is not valid: expected a port number (1-65535)")
    return int(value)


class Front:
    """The ASGI app uvicorn serves: ``/ping``, then vLLM's app for the rest."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.in_flight = 0
        self._attached = asyncio.Event()
        if engine is not None:
            self._attached.set()

    def attach(self, engine: Engine) -> None:
        """The engine, once vLLM is imported and the flags are read (until
        then ``/ping`` says 204 and requests wait)."""
        self.engine = engine
        self._attached.set()

    def health(self) -> tuple[int, str | None]:
        """RunPod's health answer: 200 serving, 204 booting, 503 and the
        reason once the engine has failed."""
        if self.engine is None:
            return 204, None
        try:
            self.engine.check_alive()
        except JobError as error:
            return 503, error.to_json()
        return (200, None) if self.engine.ready is not None else (204, None)

    async def ping(self, scope: Scope, receive: Receive, send: Send) -> None:
        status, reason = self.health()
        if status == 200:
            response: Response = JSONResponse({"status": "healthy"})
        elif status == 204:
            response = Response(status_code=204)
        else:
            response = Response(reason, status_code=status, media_type="application/json")
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind == "http" and scope["path"] == HEALTH_PATH:
            await self.ping(scope, receive, send)
            return
        if self.in_flight >= self.settings.max_concurrency:
            await refuse(scope, receive, send, too_busy(self.settings.max_concurrency))
            return
        self.in_flight += 1
        try:
            try:
                app = await self._app()
            except JobError as error:
                await refuse(scope, receive, send, error)
                return
            await app(scope, receive, send)
        finally:
            self.in_flight -= 1

    async def _app(self) -> Any:
        """vLLM's app once the engine serves; a request that arrives during
        the boot waits for it, up to ``BOOT_WAIT_S``."""
        ready = self.engine.ready if self.engine is not None else None
        if ready is None:
            try:
                ready = await asyncio.wait_for(self._boot(), self.settings.boot_wait_s)
            except TimeoutError:
                raise JobError(
                    f"the engine is still starting after BOOT_WAIT_S={self.settings.boot_wait_s:g} s; retry",
                    status=503,
                    type="ServiceUnavailableError",
                ) from None
        assert self.engine is not None
        self.engine.check_alive()
        return ready.app

    async def _boot(self) -> Ready:
        await self._attached.wait()
        assert self.engine is not None
        return await self.engine.start()


class HealthOnly:
    """The app on ``PORT_HEALTH`` when it differs from ``PORT``: ``/ping`` only."""

    def __init__(self, front: Front) -> None:
        self.front = front

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] != "http":
            return
        elif scope["path"] == HEALTH_PATH:
            await self.front.ping(scope, receive, send)
        else:
            await refuse(scope, receive, send, HTTPError(404, f"only {HEALTH_PATH} is served on this port"))


async def _lifespan(receive: Receive, send: Send) -> None:
    """Nothing to start or stop here: the engine runs vLLM's app lifespan
    itself, in every mode."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def too_busy(limit: int) -> JobError:
    return JobError(
        f"this worker is already serving MAX_CONCURRENCY={limit} requests; retry shortly",
        status=429,
        type="TooManyRequestsError",
    )


async def refuse(scope: Scope, receive: Receive, send: Send, error: HTTPError) -> None:
    """Answer ``error`` as its JSON error (HTTP; ``Retry-After`` with a 429 or
    a 503) or a close (WebSocket)."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1013 if error.status in (429, 503) else 1011})
        return
    headers = {"Retry-After": str(RETRY_AFTER_S)} if error.status in (429, 503) else error.headers
    await JSONResponse(error.body(), status_code=error.status, headers=headers)(scope, receive, send)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to ``serve`` (as vLLM's own
    ``NoSignalServer`` does): with two servers, each would otherwise catch
    SIGTERM for itself alone."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _QuietHealthChecks(logging.Filter):
    """RunPod asks ``/ping`` every few seconds: keep those out of the access log."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and len(args) >= 5 and args[2] == HEALTH_PATH and args[4] in (200, 204))


def uvicorn_config(app: Any, host: str, port: int, grace_s: float) -> uvicorn.Config:
    """uvicorn as ``vllm serve`` configures it. vLLM's uvicorn flags are
    applied once vLLM has read them (``_apply_uvicorn_flags``)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        timeout_keep_alive=int(os.environ.get("VLLM_HTTP_TIMEOUT_KEEP_ALIVE") or 5),
        timeout_graceful_shutdown=grace_s,  # type: ignore[arg-type]  # a float works: uvicorn hands it to asyncio.wait_for
    )


def _apply_uvicorn_flags(args: Namespace) -> None:
    """``UVICORN_LOG_LEVEL`` and ``DISABLE_UVICORN_ACCESS_LOG``, as ``vllm serve`` applies them."""
    level = str(args.uvicorn_log_level or "info").upper()
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(level)
    if args.disable_uvicorn_access_log:
        logging.getLogger("uvicorn.access").disabled = True


async def serve(settings: Settings, listen: Listen, load: Loader, watch: Watch | None = None) -> int:
    """Serve until SIGTERM/SIGINT. The ports open first and ``/ping`` says
    204; vLLM is then imported, the flags read (``load``, in a thread, so
    ``/ping`` keeps answering) and the engine booted; ``/ping`` says 200 as
    soon as it serves. ``watch`` runs beside the engine from its boot on.
    Returns the exit status."""
    grace = settings.fatal_exit_delay_s
    front = Front(settings)
    servers = [_Server(uvicorn_config(front, listen.host, listen.port, grace))]
    if listen.health_port != listen.port:
        health = uvicorn_config(HealthOnly(front), listen.host, listen.health_port, grace)
        health.access_log = False
        servers.append(_Server(health))
    logging.getLogger("uvicorn.access").addFilter(_QuietHealthChecks())
    tasks = [asyncio.create_task(server.serve()) for server in servers]
    with _stop_on_signals(servers):
        while not all(server.started for server in servers):
            if any(task.done() for task in tasks):  # a port that cannot be bound
                _stop(servers)
                await asyncio.gather(*tasks, return_exceptions=True)
                return 1
            await asyncio.sleep(0.01)
        logger.info(
            "load-balancing endpoint on http://%s:%d (OpenAI: /v1, health: %s on port %d)",
            listen.host,
            listen.port,
            HEALTH_PATH,
            listen.health_port,
        )
        try:
            engine, config = await asyncio.to_thread(load)
        except ConfigError:  # a bad setting: the command line reports it
            _stop(servers)
            await asyncio.gather(*tasks)
            raise
        if all(server.should_exit for server in servers):
            return 0  # stopped (SIGTERM, Ctrl-C) before there was anything to boot
        _apply_uvicorn_flags(config.args)
        front.attach(engine)
        boot = asyncio.create_task(engine.start())
        boot.add_done_callback(lambda task: task.cancelled() or task.exception())
        watching = asyncio.create_task(watch(engine)) if watch is not None else None
        try:
            await asyncio.gather(*tasks)
        finally:
            if watching is not None:
                watching.cancel()
            if engine.ready is None:  # stopped during the boot: no AsyncLLM to shut down yet
                from .engine import stop_child_processes

                await asyncio.to_thread(stop_child_processes)
            await engine.shutdown()
    return 0


def _stop(servers: Sequence[uvicorn.Server]) -> None:
    for server in servers:
        server.should_exit = True


@contextlib.contextmanager
def _stop_on_signals(servers: Sequence[uvicorn.Server]) -> Iterator[None]:
    """SIGTERM (how RunPod stops a worker) and SIGINT stop every server. The
    engine chains its own SIGTERM handler onto this one once it has booted,
    so vLLM's processes are stopped first."""

    def stop(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and all(server.should_exit for server in servers):
            for server in servers:  # a second Ctrl-C: do not wait for open requests
                server.force_exit = True
        _stop(servers)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run(settings: Settings, listen: Listen, load: Loader, watch: Watch | None = None) -> int:
    """Run the mode in a new event loop (uvloop where installed, as ``vllm serve``)."""
    return event_loop.run(serve(settings, listen, load, watch))
