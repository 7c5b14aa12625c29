"""The engine: vLLM's ``AsyncLLM`` and vLLM's own OpenAI app over it.

The engine boots on the first job, in the event loop that serves jobs; jobs
that arrive during the boot wait for that same boot. The production worker
starts the build earlier, at process start (``build_early``), and the first
job's boot takes it over. When the boot fails,
or the engine dies later, every waiting job gets the reason and the worker
exits non-zero so RunPod replaces it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import gc
import json
import logging
import os
import signal
import threading
import time
from argparse import Namespace
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import asgi, embedded_model, flags
from . import vllm_internals as vi
from .config import check_parallelism, engine_config, on_cpu, uses_embedded_model
from .errors import JobError
from .settings import Settings

logger = logging.getLogger(__name__)

WATCHDOG_INTERVAL_S = 1.0


@dataclass
class Ready:
    """A booted engine and the app built over it."""

    llm: Any
    app: Any
    args: Namespace
    served_model: str
    boot_seconds: float
    drafted: bool  # the app is the one built beside the engine build (draft_beside)
    marks: dict[str, float]  # seconds since process start at each boot step (Engine.mark)


@dataclass
class Draft:
    """vLLM's OpenAI app, built beside the engine build for the tasks the
    engine will most likely report; used once the engine reports the same."""

    app: Any = None
    tasks: tuple[str, ...] | None = None


def exit_process(reason: str) -> None:
    logger.critical("the engine failed; the worker exits so RunPod replaces it: %s", reason)
    os._exit(1)


class Engine:
    def __init__(
        self,
        settings: Settings | None = None,
        environ: Mapping[str, str] | None = None,
        on_fatal: Callable[[str], None] = exit_process,
        config: flags.EngineConfig | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(environ)
        self.environ = environ
        self.config = config
        self._on_fatal = on_fatal
        self._boot: asyncio.Task[Ready] | None = None
        self._ready: Ready | None = None
        self._failure: str | None = None
        self._lifespan: Any = None
        self._watchdog: asyncio.Task | None = None
        self._llm: Any = None
        self._early: concurrent.futures.Future[tuple[Namespace, Any, Draft]] | None = None
        self._build_began: float | None = None
        self._marks: dict[str, float] = {}
        self._before_engine: Callable[[], object] | None = None
        self._engine_started: Callable[[], bool] = lambda: False
        self._on_sigterm: Callable[[int, Any], None] | None = None

    @property
    def ready(self) -> Ready | None:
        return self._ready

    async def start(self) -> Ready:
        """The booted engine; the first caller starts the boot, others wait for it."""
        if self._ready is not None:
            return self._ready
        if self._failure is not None:
            raise JobError(self._failure, status=503, type="EngineError")
        if self._boot is None:
            self._boot = asyncio.create_task(self._start())
        try:
            # shield: a cancelled job must not cancel the boot other jobs wait for
            return await asyncio.shield(self._boot)
        except JobError:
            raise
        except Exception as error:
            raise JobError(self._fail(error), status=503, type="EngineError") from None

    def _fail(self, error: BaseException | str) -> str:
        if self._failure is None:
            detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            self._failure = f"the vLLM engine failed to start or died: {detail}"
            loop = asyncio.get_running_loop()
            loop.call_later(self.settings.fatal_exit_delay_s, self._fatal, self._failure)
        return self._failure

    def fail(self, reason: str) -> None:
        """Fail the engine from outside (in the event loop): a node of its
        group has left. Requests and ``/ping`` get the reason, and the
        worker exits non-zero after ``FATAL_EXIT_DELAY_S``."""
        self._fail(reason)

    def _fatal(self, reason: str) -> None:
        self._stop_llm()  # os._exit skips atexit: stop vLLM's processes first
        self._on_fatal(reason)

    def _stop_on_sigterm(self) -> None:
        """SIGTERM (how RunPod stops a worker) stops vLLM's processes first,
        then does what it did before. Without this they outlive the worker:
        the runpod SDK's shutdown does not end the process by itself.
        Installed when the boot starts: on a GPU a boot takes minutes, and
        RunPod may stop the worker during it. Installed again when the first
        job takes over an early build, if the runpod SDK's loop has replaced
        it since with its own handler (which this one then chains onto)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if previous is self._on_sigterm or not (callable(previous) or previous == signal.SIG_DFL):
            return

        def on_sigterm(signum: int, frame: Any) -> None:
            # jobs still running fail with this reason, and the process exits
            # after FATAL_EXIT_DELAY_S even if the SDK's loop lingers
            try:
                self._fail("the worker received SIGTERM and stopped the engine")
                self._close_lifespan_soon()
            except RuntimeError:  # no event loop runs any more: nothing to fail
                pass
            self._stop_llm()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)
        self._on_sigterm = on_sigterm

    def _close_lifespan_soon(self) -> None:
        """Leave the app's lifespan in the event loop, soon (called from the
        SIGTERM handler, hence through the loop's thread-safe door). Left
        open, the loop's own teardown would close its generator mid-flight
        when the runpod SDK's loop ends, and log a traceback."""
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is None:
            return
        loop = asyncio.get_running_loop()

        async def leave() -> None:
            try:
                await lifespan.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - best effort while stopping
                logger.debug("lifespan shutdown failed", exc_info=True)

        loop.call_soon_threadsafe(loop.create_task, leave())

    def _stop_llm(self) -> None:
        """Stop vLLM's engine processes. They are not children that die with
        this process: left running, each holds its KV cache and weights.
        While the ``AsyncLLM`` that owns them is still being built (in a
        thread), they are stopped as this process's children."""
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None
        elif any(boot is not None and not boot.done() for boot in (self._boot, self._early)):
            stop_child_processes()

    def check_alive(self) -> None:
        """Raise the engine failure, if the engine has died since boot."""
        ready = self._ready
        if self._failure is not None:
            raise JobError(self._failure, status=503, type="EngineError")
        error = vi.engine_dead(ready.llm) if ready is not None else None
        if error is not None:
            raise JobError(self._fail(error), status=503, type="EngineError")

    def build_early(self, before_engine: Callable[[], object] | None = None) -> bool:
        """Start building the engine now, in a thread, before any event loop
        runs: the production entrypoint calls this before it imports the
        runpod SDK, whose job loop starts only after its own set-up; the
        first job's boot then takes over the build instead of starting it.

        ``before_engine`` runs once vLLM's configuration is made, before vLLM
        starts its engine process; it may raise to stop the build there. The
        production entrypoint waits there for the runpod SDK's fitness checks,
        which it runs in a subprocess (fitness.py). On a GPU the build starts
        early only then: the SDK's own in-process checks initialise CUDA in
        this process and allocate GPU memory, which beside an engine build
        would make vLLM spawn its engine process instead of forking it and
        upset its memory profiling; without the subprocess a GPU worker
        builds on the first job, after those checks. Returns whether the
        build started."""
        if self._early is not None or self._boot is not None or (before_engine is None and not on_cpu()):
            return False
        self._before_engine = before_engine
        self._stop_on_sigterm()
        early: concurrent.futures.Future[tuple[Namespace, Any, Draft]] = concurrent.futures.Future()
        self._early = early
        self._build_began = time.perf_counter()  # the boot's time counts from here
        self.mark("build_began")

        def build() -> None:
            try:
                early.set_result(self._build())
            except BaseException as error:  # noqa: BLE001 - the first job reports it
                logger.error("the engine build failed: %s: %s", type(error).__name__, error)
                early.set_exception(error)

        threading.Thread(target=build, name="engine-build", daemon=True).start()
        return True

    def _build(self) -> tuple[Namespace, Any, Draft]:
        """The part of the boot that needs no event loop (run in a thread):
        the configuration, the model's files and the engine build, with the
        app's work that needs no engine done beside it (``draft_beside``)."""
        self.mark("build_began")
        config = self.config or engine_config(self.settings, self.environ)
        args = config.args
        # read by vLLM during the build; the user's values win
        environment = {name: os.environ.setdefault(name, value) for name, value in config.environment.items()}
        logger.info(config.describe())
        if environment:
            logger.info("vLLM environment for this engine: %s", environment)
        if uses_embedded_model(args, self.settings):
            embedded_model.prepare(self.settings.embedded_model_dir)
        elif not os.path.isdir(args.model):
            check_parallelism(args)
        vi.import_parser_plugins(args)
        # Any exit stops vLLM's processes, built or still building: a SIGTERM
        # that ends the runpod SDK's loop during an early build (the SDK has
        # replaced this engine's handler by then) included.
        atexit.register(self._stop_llm)
        built = threading.Event()
        configured: concurrent.futures.Future[Any] = concurrent.futures.Future()
        before = child_processes()
        self._engine_started = lambda: configured.done() and bool(started_since(before))

        def on_config(vllm_config: Any) -> None:
            self.mark("configured")
            os.environ.update(environment)  # vLLM's configuration may have set some (the CPU's start method)
            if self._before_engine is not None:
                self._before_engine()  # may raise: then the side thread imports nothing
            configured.set_result(vllm_config)

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vllm-app") as pool:
            drafting = pool.submit(draft_beside, args, built, self._engine_started, configured)
            try:
                llm = self._llm = vi.build_async_llm(args, on_config=on_config)
                self.mark("built")
            finally:
                built.set()
                if not configured.done():  # the build failed before its configuration
                    configured.set_result(None)
            draft = drafting.result()
        return args, llm, draft

    def wait_for_engine_process(self) -> None:
        """Return once the early build has started vLLM's engine process, or
        has ended. vLLM forks that process where it can (on a GPU, and on
        the CPU with one model worker, config.py): a fork while another
        thread of this process is importing a module can leave the child
        waiting forever on that module's lock. So the production entrypoint
        imports and starts the runpod SDK only after this, and the app's
        import beside the build (``draft_beside``) waits for the same."""
        while (early := self._early) is not None and not early.done() and not self._engine_started():
            time.sleep(0.02)

    async def _start(self) -> Ready:
        began = self._build_began or time.perf_counter()
        self._stop_on_sigterm()
        # Building the engine blocks for the whole model load; a thread keeps
        # the event loop (job polling, the local endpoint) responsive meanwhile.
        if self._early is not None:
            args, llm, draft = await asyncio.wrap_future(self._early)
        else:
            args, llm, draft = await asyncio.to_thread(self._build)
        if self._failure is not None:  # SIGTERM arrived while it was being built
            self._stop_llm()
            raise JobError(self._failure, status=503, type="EngineError")
        await vi.start_async_llm(llm)
        supported_tasks = await llm.get_supported_tasks()
        # the engine's answer crosses a process boundary: a list, not a tuple
        drafted = draft.tasks is not None and tuple(draft.tasks) == tuple(supported_tasks)
        if draft.app is not None and not drafted:
            gc.unfreeze()  # the heap frozen beside the build holds the app not used: let it go
        app = draft.app if drafted else vi.build_app(args, supported_tasks, llm.model_config)
        await vi.init_app_state(llm, app.state, args, supported_tasks)
        vi.on_engine_death(app, lambda: self._fail("vLLM reported the engine dead"))
        self._lifespan = app.router.lifespan_context(app)
        await self._lifespan.__aenter__()
        served = (args.served_model_name or [args.model])[0]
        self.mark("ready")
        self._ready = Ready(llm, app, args, served, time.perf_counter() - began, drafted, dict(self._marks))
        self._watchdog = asyncio.create_task(self._watch())
        loop = type(asyncio.get_running_loop())
        logger.info(
            "engine ready in %.1f s, serving %s (event loop: %s.%s)",
            self._ready.boot_seconds,
            served,
            loop.__module__,
            loop.__qualname__,
        )
        logger.info("boot marks (seconds since process start): %s", json.dumps(self._ready.marks))
        return self._ready

    def mark(self, step: str) -> None:
        """Record when a boot step ended, in seconds since process start
        (the first record of each step counts): ``build_began`` (vLLM and the
        configuration imported and parsed), ``configured`` (vLLM's
        ``VllmConfig`` made, the model inspected), ``built`` (the engine's
        processes up, weights loaded, KV cache allocated), ``ready`` (the app
        over it). Logged at ready; bench/image_cold_start.py reads them."""
        self._marks.setdefault(step, round(since_process_start(), 3))

    async def _watch(self) -> None:
        while self._failure is None:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            try:
                self.check_alive()
            except JobError:
                return

    async def request(
        self, method: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> asgi.Response:
        """Call vLLM's OpenAI app in memory."""
        ready = await self.start()
        self.check_alive()
        return await asgi.request(ready.app, method, path, body, headers)

    async def shutdown(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._lifespan is not None:
            try:
                await self._lifespan.__aexit__(None, None, None)
            except Exception:  # noqa: BLE001 - best effort at exit
                logger.debug("lifespan shutdown failed", exc_info=True)
            self._lifespan = None
        self._stop_llm()
        self._ready = None


def since_process_start() -> float:
    """Seconds since this process started. On Linux from its start time in
    clock ticks since boot (``/proc/self/stat``, to 10 ms): psutil dates
    processes from a boot time rounded to whole seconds, which would shift
    every mark by a constant of up to a second."""
    try:
        with open("/proc/self/stat") as stat:
            after_name = stat.read().rsplit(")", 1)[1].split()
        started = int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started
    except (OSError, ValueError, IndexError, AttributeError):  # not Linux
        import psutil

        return time.time() - psutil.Process().create_time()


def child_processes() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children()}


def started_since(before: set[int]) -> set[int]:
    """The processes this one has started since ``before`` was taken, but
    for multiprocessing's resource tracker (a helper it starts before a
    process that shares memory, not the process itself)."""
    import psutil

    started = set()
    for child in psutil.Process().children():
        try:
            if child.pid not in before and "resource_tracker" not in " ".join(child.cmdline()):
                started.add(child.pid)
        except psutil.Error:  # ended meanwhile
            pass
    return started


def draft_beside(
    args: Namespace,
    built: threading.Event,
    engine_started: Callable[[], bool],
    configured: concurrent.futures.Future[Any],
) -> Draft:
    """The app's start-up work that needs no engine, done while the engine
    builds (in a thread), once the build has started vLLM's engine process
    (after the configuration, so not vLLM's model-inspection subprocess,
    which runs during it when its cache is cold) or has ended. Not earlier:
    vLLM may fork its engine process, and must not do so while this thread
    imports (``Engine.wait_for_engine_process``). The steps:

    - import vLLM's OpenAI app (``vi.load_app``);
    - fill vLLM's chat-template caches that the app's renderer warm-up reads
      (``vi.warm_chat_template``);
    - build the app for the tasks the engine will most likely report;
    - freeze the heap as the app's lifespan does at start-up
      (``vi.freeze_gc_heap``), so that the lifespan's own collection then
      traverses only what is new. Cyclic garbage alive at this point and
      dropped later is not collected: the build's few objects in flight (the
      boot unfreezes the heap if it does not use the app built here).

    ``engine_started``: whether the build has started the engine process;
    ``configured``: the engine's ``VllmConfig`` (None if the build failed
    before it). While that process runs, the build thread mostly waits for
    it, so this work costs the boot little; before it, the two threads would
    contend for the interpreter on the boot's critical path.

    Only ``load_app``'s failure is raised (the boot reports it); the rest is
    an optimisation, and what fails here is done again, and reported, after
    the build."""
    while not built.wait(0.02) and not engine_started():
        pass
    if configured.done() and configured.result() is None:
        return Draft()  # the build failed before its configuration: its error is what matters
    vi.load_app()
    vllm_config = configured.result()
    if vllm_config is None:
        return Draft()
    try:
        vi.warm_chat_template(args, vllm_config)
    except Exception:  # noqa: BLE001 - the app's own warm-up does it again, and reports it
        logger.debug("warming the chat template beside the engine build failed", exc_info=True)
    draft = Draft()
    try:
        tasks = vi.likely_supported_tasks(vllm_config)
        if tasks is not None:
            draft = Draft(vi.build_app(args, tasks, vllm_config.model_config), tasks)
    except Exception:  # noqa: BLE001 - built again after the build, where a failure is reported
        logger.debug("building the app beside the engine build failed", exc_info=True)
    vi.freeze_gc_heap()
    return draft


def stop_child_processes() -> None:
    """Kill every process this one has spawned. Each is frozen (SIGSTOP)
    first, and the tree is read again until no new process appears, so that
    none starts another, or is orphaned out of reach, while the others die."""
    import psutil

    me = psutil.Process()
    frozen: dict[int, psutil.Process] = {}
    for _ in range(50):
        fresh = [child for child in me.children(recursive=True) if child.pid not in frozen]
        if not fresh:
            break
        for child in fresh:
            try:
                child.suspend()
                frozen[child.pid] = child
            except psutil.NoSuchProcess:
                pass
    if not frozen:
        return
    logger.warning("stopping %d engine process(es): %s", len(frozen), ", ".join(map(str, frozen)))
    for child in frozen.values():
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=5)
