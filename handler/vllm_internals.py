"""Everything the worker uses of vLLM, in one module.

No other module of the worker imports vLLM or touches its internals: they use
the names and small helpers here. An upgrade is therefore a change to this
module (and its contract test, ``tests/test_vllm_contract.py``), and
docs/upgrading.md says how to make one.

Every name is looked up when this module is imported, with the module paths
of neighbouring vLLM releases as fallbacks (vLLM moves its entrypoint modules:
the serve argument parser moved in 0.29 and again in 0.33). Every attribute,
method, field and parameter the helpers rely on is checked then too. Whatever
is missing is collected, and the import fails once with an ``ImportError``
that lists all of it, instead of a watchdog that goes quiet or a field read as
None. vLLM's OpenAI app is the exception: ``load_app`` imports and checks it
the same way, and the engine boot runs it beside the engine build.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib
import inspect
import logging
import os
import threading
from argparse import Namespace
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

_missing: list[str] = []


def _first(attribute: str, *modules: str) -> Any:
    """``attribute`` from the first of ``modules`` that has it; recorded as
    missing (and None) when none has it. Only a module that does not exist
    sends the search on; one that exists and fails to import is recorded with
    its error, not passed over for an older release's path."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            absent = isinstance(error, ModuleNotFoundError) and error.name is not None
            if absent and (name == error.name or name.startswith(f"{error.name}.")):
                continue  # not in this release: look in the next place
            _missing.append(f"{attribute}: importing {name} failed: {error}")  # it exists and fails
            return None
        if hasattr(module, attribute):
            return getattr(module, attribute)
    _missing.append(f"{attribute} (looked in {', '.join(modules)})")
    return None


def _name(owner: Any) -> str:
    return owner.__qualname__ if hasattr(owner, "__qualname__") else repr(owner)


def _has(owner: Any, *names: str) -> None:
    """Record each of ``names`` that ``owner`` (a class or module) lacks."""
    if owner is None:  # recorded by _first already
        return
    _missing.extend(f"{_name(owner)}.{name}" for name in names if not hasattr(owner, name))


def _params(function: Any, *names: str) -> None:
    """Record each keyword ``function`` does not take."""
    if function is None:
        return
    taken = inspect.signature(function).parameters
    _missing.extend(f"{_name(function)}({name}=...)" for name in names if name not in taken)


def _fields(model: Any, *names: str) -> None:
    """Record each field the pydantic model ``model`` does not declare."""
    if model is None:
        return
    _missing.extend(f"{_name(model)}.{name} (field)" for name in names if name not in model.model_fields)


def _dataclass_fields(cls: Any, *names: str) -> None:
    if cls is None:
        return
    have = {field.name for field in dataclasses.fields(cls)}
    _missing.extend(f"{_name(cls)}.{name} (field)" for name in names if name not in have)


def _member(owner: Any, name: str) -> Any:
    """``owner.name``, or None where either is missing (``_has`` records that)."""
    return getattr(owner, name) if owner is not None and hasattr(owner, name) else None


def _assigns(function: Any, *names: str) -> None:
    """Record each attribute name that ``function``'s code no longer uses:
    instance attributes set in ``__init__``, or read or set by a vLLM function
    the worker relies on."""
    if function is None:
        return
    code = inspect.unwrap(function).__code__
    used = set(code.co_names) | {n for c in code.co_consts if inspect.iscode(c) for n in c.co_names}
    _missing.extend(f"{_name(function)} uses .{name}" for name in names if name not in used)


# --- the serve argument parser and its checks -------------------------------

# `vllm serve`'s parser: 0.33+, 0.29-0.32, up to 0.28.
_CLI_ARGS = (
    "vllm.entrypoints.serve.cli_args",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.entrypoints.openai.cli_args",
)
make_arg_parser = _first("make_arg_parser", *_CLI_ARGS)
validate_parsed_serve_args = _first("validate_parsed_serve_args", *_CLI_ARGS)
FlexibleArgumentParser = _first("FlexibleArgumentParser", "vllm.utils.argparse_utils", "vllm.utils")
# `--no-enable-flash-late-interaction` into the engine arguments (0.32+).
propagate_flash_late_interaction = _first("propagate_flash_late_interaction", *_CLI_ARGS)

# argparse internals the flag table reads (the standard library's, but private).
_has(argparse, "_AppendAction", "_HelpAction", "BooleanOptionalAction")
_assigns(argparse._ActionsContainer.__init__, "_actions")

# The serve namespace's dests that this module reads; every other dest the
# worker reads is checked against the parser by the contract test.
MODEL_TAG = "model_tag"
SERVE_DESTS = (MODEL_TAG, "model", "tool_parser_plugin", "reasoning_parser_plugin")


def serve_parser(prog: str) -> argparse.ArgumentParser:
    """``vllm serve``'s argument parser (without the ``serve`` subcommand)."""
    parser = make_arg_parser(FlexibleArgumentParser(prog=prog))
    dests = {action.dest for action in parser_actions(parser)}
    lacking = [dest for dest in SERVE_DESTS if dest not in dests]
    if lacking:
        raise ImportError(f"vLLM {vllm_version}'s serve parser has no {', '.join(lacking)}; see docs/upgrading.md")
    return parser


def parser_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action (option) of the parser."""
    return list(parser._actions)


def is_help_action(action: argparse.Action) -> bool:
    return isinstance(action, argparse._HelpAction)


def is_append_action(action: argparse.Action) -> bool:
    """An option given once per value (``--middleware a --middleware b``)."""
    return isinstance(action, argparse._AppendAction)


def raise_on_parse_error(parser: argparse.ArgumentParser, fail: Callable[[str], NoReturn]) -> None:
    """Make the parser call ``fail(message)`` (which raises) instead of
    printing usage and exiting."""
    parser.error = fail  # type: ignore[method-assign,assignment]


def apply_model_tag(args: Namespace) -> None:
    """The positional model (``vllm serve <model>``) wins over ``--model``,
    as ``vllm serve`` does in ``ServeSubcommand.cmd``."""
    if args.model_tag is not None:
        args.model = args.model_tag


# --- the engine --------------------------------------------------------------

AsyncEngineArgs = _first("AsyncEngineArgs", "vllm.engine.arg_utils")
AsyncLLM = _first("AsyncLLM", "vllm.v1.engine.async_llm")
_AsyncMPClient = _first("AsyncMPClient", "vllm.v1.engine.core_client")
UsageContext = _first("UsageContext", "vllm.usage.usage_lib")
SamplingParams = _first("SamplingParams", "vllm.sampling_params", "vllm")
RequestOutputKind = _first("RequestOutputKind", "vllm.sampling_params", "vllm")
current_platform = _first("current_platform", "vllm.platforms")
vllm_version: str = _first("__version__", "vllm")
ToolParserManager = _first("ToolParserManager", "vllm.tool_parsers", "vllm.entrypoints.openai.tool_parsers")
ReasoningParserManager = _first("ReasoningParserManager", "vllm.reasoning")
ModelConfig = _first("ModelConfig", "vllm.config")
FALLBACK_SUPPORTED_TASKS = _first("FALLBACK_SUPPORTED_TASKS", "vllm.tasks")
cached_tokenizer_from_config = _first("cached_tokenizer_from_config", "vllm.tokenizers.registry", "vllm.tokenizers")
freeze_gc_heap = _first("freeze_gc_heap", "vllm.utils.gc_utils")
# The chat template's resolution by vLLM's HF renderer, which
# warm_chat_template runs ahead.
_resolve_content_format = _first("resolve_chat_template_content_format", "vllm.renderers.hf")
_load_chat_template = _first("load_chat_template", "vllm.renderers.chat_utils", "vllm.entrypoints.chat_utils")
_HfRenderer = _first("HfRenderer", "vllm.renderers.hf")
_renderers = _first("RENDERER_REGISTRY", "vllm.renderers.registry")
_tokenizer_args = _first("tokenizer_args_from_config", "vllm.tokenizers.registry")

_has(AsyncEngineArgs, "from_cli_args", "create_engine_config")
_params(_member(AsyncEngineArgs, "create_engine_config"), "usage_context", "headless")
_dataclass_fields(AsyncEngineArgs, "enable_log_requests", "aggregate_engine_logging", "disable_log_stats")
_has(UsageContext, "OPENAI_API_SERVER")
_has(
    AsyncLLM,
    "from_vllm_config",
    "_run_output_handler",
    "errored",
    "dead_error",
    "is_running",
    "get_supported_tasks",
    "reset_mm_cache",
    "shutdown",
    "generate",
    "from_engine_args",
)
_params(
    _member(AsyncLLM, "from_vllm_config"),
    "vllm_config",
    "usage_context",
    "enable_log_requests",
    "aggregate_engine_logging",
    "disable_log_stats",
)
_assigns(_member(AsyncLLM, "__init__"), "output_handler", "engine_core", "model_config")
_has(_AsyncMPClient, "_ensure_output_queue_task")
_assigns(_member(_AsyncMPClient, "_ensure_output_queue_task"), "resources", "output_queue_task")
_has(current_platform, "is_cpu")
_has(RequestOutputKind, "DELTA", "FINAL_ONLY")
_has(SamplingParams, "__struct_fields__")  # a msgspec struct
_has(ToolParserManager, "import_tool_parser", "list_registered")
_has(ReasoningParserManager, "import_reasoning_parser", "list_registered")
_assigns(_member(ModelConfig, "__post_init__"), "runner_type")
_params(_resolve_content_format, "chat_template", "tools", "given_format", "tokenizer", "model_config")
_has(_renderers, "load_renderer_cls")
_assigns(_member(_HfRenderer, "render_messages"), "resolve_chat_template_content_format")


# --- sizing the engine for the endpoint ---------------------------------------

_VllmConfig = _first("VllmConfig", "vllm.config")
_CompilationConfig = _first("CompilationConfig", "vllm.config")
_CUDAGraphMode = _first("CUDAGraphMode", "vllm.config.compilation", "vllm.config")
_has(AsyncEngineArgs, "get_batch_defaults")
_has(_VllmConfig, "_set_cudagraph_sizes")
_has(_CUDAGraphMode, "NONE", "FULL_AND_PIECEWISE")
_dataclass_fields(_CompilationConfig, "cudagraph_capture_sizes", "max_cudagraph_capture_size", "cudagraph_mode")
# what _set_cudagraph_sizes reads of the config (the stub in capture_sizes gives each)
_assigns(
    _member(_VllmConfig, "_set_cudagraph_sizes"),
    "model_config",
    "enforce_eager",
    "compilation_config",
    "scheduler_config",
    "max_num_seqs",
    "max_num_batched_tokens",
    "uniform_decode_query_len",
)


# vLLM's environment for one model worker on the CPU, from its platform's
# configuration step (CpuPlatform.check_and_update_config; the contract test
# reads both rules there):
# - its platform turns the single-process executor ("uni") into "mp", a
#   separate process for the model, unless VLLM_ENABLE_V1_MULTIPROCESSING is
#   "0" (AsyncLLM still runs EngineCore in its own process);
# - it sets VLLM_WORKER_MULTIPROC_METHOD to "spawn", for the OpenMP set-up of
#   the mp executor's worker processes, which the single-process executor
#   does not start; "fork", vLLM's own default elsewhere, starts EngineCore
#   without importing torch and vLLM again (the worker sets it back after
#   that step).
CPU_SINGLE_PROCESS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_WORKER_MULTIPROC_METHOD": "fork"}


def batch_size_set(args: Namespace) -> bool:
    """Whether the user sized vLLM's batch: ``--max-num-seqs``, or CUDA-graph
    capture sizes by flag or in ``--compilation-config``."""
    compilation = args.compilation_config
    return any(
        value is not None
        for value in (
            args.max_num_seqs,
            args.cudagraph_capture_sizes,
            args.max_cudagraph_capture_size,
            compilation.cudagraph_capture_sizes,
            compilation.max_cudagraph_capture_size,
        )
    )


# vLLM's CUDA platform where NVML is unavailable (Jetson, WSL): it asks torch
# for the device's memory, which starts CUDA (the contract test reads the name).
_CUDA_WITHOUT_NVML = "NonNvmlCudaPlatform"


def default_max_num_seqs(args: Namespace) -> int | None:
    """The ``max_num_seqs`` vLLM's OpenAI server picks on this machine when
    none is set (``EngineArgs.get_batch_defaults``: it reads the device's
    memory through NVML, which starts no CUDA context). None where reading
    it would start CUDA in this process (vLLM would then spawn its engine
    process instead of forking it)."""
    if type(current_platform).__name__ == _CUDA_WITHOUT_NVML:
        return None
    world_size = args.tensor_parallel_size * args.pipeline_parallel_size
    _, max_num_seqs = AsyncEngineArgs.get_batch_defaults(world_size)
    return int(max_num_seqs[UsageContext.OPENAI_API_SERVER])


def capture_sizes(max_num_seqs: int, max_num_batched_tokens: int) -> list[int]:
    """The batch sizes vLLM captures CUDA graphs for, by its own
    ``VllmConfig._set_cudagraph_sizes``, for a model without speculative
    decoding on a GPU that is not a data-centre Blackwell (those allow up to
    1024 instead of 512). Computed on any machine: the method runs on a
    stand-in for the config holding just what it reads."""
    from types import SimpleNamespace

    compilation = _CompilationConfig(cudagraph_mode=_CUDAGraphMode.FULL_AND_PIECEWISE)
    stand_in = SimpleNamespace(
        model_config=SimpleNamespace(enforce_eager=False),
        compilation_config=compilation,
        scheduler_config=SimpleNamespace(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        uniform_decode_query_len=1,
        speculative_config=None,
        performance_mode="balanced",
    )
    _VllmConfig._set_cudagraph_sizes(stand_in)
    return list(compilation.cudagraph_capture_sizes)


# --- vLLM's cache of model-class facts, baked at image build -----------------

_ModelRegistry = _first("ModelRegistry", "vllm.model_executor.models.registry")
_LazyRegisteredModel = _first("_LazyRegisteredModel", "vllm.model_executor.models.registry")
_load_general_plugins = _first("load_general_plugins", "vllm.plugins")
_has(_ModelRegistry, "models")
_has(_LazyRegisteredModel, "inspect_model_cls")
_dataclass_fields(_LazyRegisteredModel, "module_name", "class_name")
# the subprocess each cold inspection starts, which inspect_model_classes runs in process
_assigns(_member(_LazyRegisteredModel, "inspect_model_cls"), "_run_in_subprocess", "_save_modelinfo_to_cache")


def inspect_model_classes() -> tuple[int, dict[str, str]]:
    """Fill vLLM's cache of model-class facts (``VLLM_CACHE_ROOT/modelinfos``)
    for every architecture vLLM's registry lists, as vLLM's boot does for the
    served model's class when that cache has no entry for it: then it imports
    the class in a subprocess, several seconds. Here each inspection runs in
    this process instead (the subprocess keeps CUDA out of a serving process;
    an image build has none to keep out), after vLLM's general plugins load,
    as they do in that subprocess. Each entry is keyed by its model file's
    hash, so it holds for this vLLM on any device. Returns how many classes
    were inspected, and why each architecture whose class does not import
    here failed (vLLM inspects those at boot, as before)."""
    import sys

    registry: Any = sys.modules[_LazyRegisteredModel.__module__]
    _load_general_plugins()
    in_subprocess = registry._run_in_subprocess
    registry._run_in_subprocess = lambda function: function()
    inspected: set[tuple[str, str]] = set()
    failed: dict[str, str] = {}
    try:
        for architecture, model in sorted(_ModelRegistry.models.items()):
            if not isinstance(model, _LazyRegisteredModel):  # registered as a class: nothing to inspect
                continue
            key = (model.module_name, model.class_name)
            if key in inspected:
                continue
            try:
                model.inspect_model_cls()
            except Exception as error:  # noqa: BLE001 - a class that does not import here is inspected at boot
                failed[architecture] = f"{type(error).__name__}: {error}".splitlines()[0]
            else:
                inspected.add(key)
    finally:
        registry._run_in_subprocess = in_subprocess
    return len(inspected), failed


def import_parser_plugins(args: Namespace) -> None:
    """Load ``--tool-parser-plugin`` and ``--reasoning-parser-plugin`` files,
    as vLLM's ``run_server_worker`` does before it builds the engine."""
    if args.tool_parser_plugin and len(args.tool_parser_plugin) > 3:
        ToolParserManager.import_tool_parser(args.tool_parser_plugin)
    if args.reasoning_parser_plugin and len(args.reasoning_parser_plugin) > 3:
        ReasoningParserManager.import_reasoning_parser(args.reasoning_parser_plugin)


def tool_parser_names() -> list[str]:
    """Every name vLLM's registry of tool-call parsers answers to."""
    return list(ToolParserManager.list_registered())


def reasoning_parser_names() -> list[str]:
    """Every name vLLM's registry of reasoning parsers answers to."""
    return list(ReasoningParserManager.list_registered())


def load_chat_template(chat_template: str) -> str | None:
    """``--chat-template``'s text, as vLLM reads it: a file, vLLM's built-in
    template of that name, or the template itself."""
    return _load_chat_template(chat_template)


def build_async_llm(args: Namespace, on_config: Callable[[Any], object] = lambda config: None) -> Any:
    """``AsyncLLM`` from the serve namespace, by the steps of vLLM's
    ``build_async_engine_client`` and ``build_async_engine_client_from_engine_args``
    (the contract test pins their list of calls). ``on_config`` is given the
    ``VllmConfig`` before the engine is built from it.

    vLLM's own function is an async context manager that builds the engine
    inside the event loop and blocks it for the whole model load; the worker
    builds it in a thread instead, so its loop keeps answering (job polling,
    /ping), and finishes with ``start_async_llm`` back in the loop."""
    if os.getenv("VLLM_WORKER_MULTIPROC_METHOD") == "forkserver":
        import multiprocessing
        import multiprocessing.forkserver as forkserver

        multiprocessing.set_start_method("forkserver")
        multiprocessing.set_forkserver_preload(["vllm.v1.engine.async_llm"])
        forkserver.ensure_running()
    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate_flash_late_interaction(args, engine_args)
    usage = UsageContext.OPENAI_API_SERVER
    vllm_config = engine_args.create_engine_config(usage_context=usage)
    on_config(vllm_config)
    return AsyncLLM.from_vllm_config(
        vllm_config=vllm_config,
        usage_context=usage,
        enable_log_requests=engine_args.enable_log_requests,
        aggregate_engine_logging=engine_args.aggregate_engine_logging,
        disable_log_stats=engine_args.disable_log_stats,
    )


def start_headless(args: Namespace) -> Any:
    """This node's share of a model that a group of nodes serves, as ``vllm
    serve --headless`` starts it on a node past the first (``run_headless``'s
    branch for ``node_rank_within_dp > 0``; the contract test pins it): the
    model's worker processes for this node, which join node 0's engine.
    Returns vLLM's executor once they have loaded their part of the model;
    its module is imported here, not by every worker."""
    start = len(_missing)
    executor = _first("MultiprocExecutor", "vllm.v1.executor.multiproc_executor")
    _params(_member(executor, "__init__"), "vllm_config", "monitor_workers")
    _assigns(_member(executor, "_init_executor"), "workers")
    _dataclass_fields(_first("WorkerProcHandle", "vllm.v1.executor.multiproc_executor"), "proc")
    _check(_missing[start:])
    engine_args = AsyncEngineArgs.from_cli_args(args)
    propagate_flash_late_interaction(args, engine_args)
    vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER, headless=True)
    return executor(vllm_config, monitor_workers=False)


def wait_for_a_worker_to_end(executor: Any) -> None:
    """Block until one of the headless executor's worker processes has
    ended (vLLM's own monitor waits on the same sentinels)."""
    import multiprocessing.connection

    multiprocessing.connection.wait([handle.proc.sentinel for handle in executor.workers])


async def start_async_llm(llm: Any) -> None:
    """What ``AsyncLLM`` and vLLM's server do once the engine is built, in the
    event loop that will use it: start the output loops (``AsyncLLM.__init__``
    starts them only when built inside a running loop), so that an engine
    failure is seen before the first request, then drop the multimodal
    profiling data."""
    asyncio.get_running_loop()
    llm._run_output_handler()
    llm.engine_core._ensure_output_queue_task()
    await llm.reset_mm_cache()


def output_loops_started(llm: Any) -> bool:
    """Both of the engine's output loops run (the contract test's check)."""
    return llm.output_handler is not None and llm.engine_core.resources.output_queue_task is not None


def engine_dead(llm: Any) -> BaseException | None:
    """vLLM's error for a dead engine, or None while it lives."""
    return llm.dead_error if llm.errored else None


# --- the OpenAI app ----------------------------------------------------------

_APP = (
    "vllm.entrypoints.serve.app",
    "vllm.entrypoints.launchers.app",
    "vllm.entrypoints.openai.api_server",
)
_APP_STATE = (
    "vllm.entrypoints.serve.api_server.app_state",
    "vllm.entrypoints.launchers.api_server.app_state",
    "vllm.entrypoints.launchers.api_server",
    "vllm.entrypoints.openai.api_server",
)
_LAUNCHER = (
    "vllm.entrypoints.serve.launcher",
    "vllm.entrypoints.launchers.launcher",
    "vllm.entrypoints.launcher",
)
_ENTRY = (
    "vllm.entrypoints.serve.api_server.entry",
    "vllm.entrypoints.launchers.api_server.entry",
    "vllm.entrypoints.openai.api_server",
)
# The app's modules take a while to import and are not needed to build the
# engine, so they are imported (and checked) by load_app, which the engine boot
# runs in a thread beside the engine build; the first use of one of these
# names also loads them.
_APP_NAMES = frozenset(
    {
        "init_app_state",
        "terminate_if_errored",
        "_engine_error_handler",
        "SERVER_FUNCTIONS",
        "_app_lifespan",
    }
)
_app_lock = threading.Lock()
_app_loaded = False
_build_app: Any = None  # vLLM's; the worker calls build_app below


def load_app() -> None:
    """Import vLLM's OpenAI app and check what the worker uses of it; raises
    one ``ImportError`` listing all that is missing, as the import does."""
    global _app_loaded
    with _app_lock:
        if _app_loaded:
            return
        start = len(_missing)
        names: dict[str, Any] = {
            "_build_app": _first("build_app", *_APP),
            "init_app_state": _first("init_app_state", *_APP_STATE),
            "terminate_if_errored": _first("terminate_if_errored", *_LAUNCHER),
            "_engine_error_handler": _first(
                "engine_error_handler",
                "vllm.entrypoints.serve.exception_handling.handlers.vllm_error",
                "vllm.entrypoints.openai.api_server",
            ),
            "_app_lifespan": _first("lifespan", *_APP),
            # vLLM's own server functions that build_async_llm and the engine
            # copy; the contract test reads their source.
            "SERVER_FUNCTIONS": {
                name: _first(name, *_ENTRY)
                for name in (
                    "build_async_engine_client",
                    "build_async_engine_client_from_engine_args",
                    "run_server_worker",
                    "build_and_serve",
                )
            },
        }
        # vLLM answers an engine error by setting app.state.server.should_exit.
        _assigns(names["terminate_if_errored"], "should_exit", "errored", "is_running")
        _assigns(names["_engine_error_handler"], "terminate_if_errored", "server")
        # The app's start-up freezes the heap (engine.draft_beside runs that step earlier too).
        _assigns(names["_app_lifespan"], "freeze_gc_heap")
        globals().update(names)
        _check(_missing[start:])
        _app_loaded = True


if TYPE_CHECKING:  # set by load_app
    init_app_state: Any
    terminate_if_errored: Any
    _engine_error_handler: Any
    SERVER_FUNCTIONS: dict[str, Any]
    _app_lifespan: Any
else:

    def __getattr__(name: str) -> Any:
        if name in _APP_NAMES:
            load_app()
            return globals()[name]
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_app(args: Namespace, supported_tasks: Any, model_config: Any) -> Any:
    """vLLM's ``build_app`` (imported by ``load_app``). The SageMaker package
    it imports would set the root logger to ERROR: see below."""
    load_app()
    return _build_app(args, supported_tasks, model_config)


@contextlib.contextmanager
def _root_logging_kept() -> Iterator[None]:
    root = logging.getLogger()
    levels: list[tuple[logging.Logger | logging.Handler, int]] = [(root, root.level)]
    levels += [(handler, handler.level) for handler in root.handlers]
    try:
        yield
    finally:
        for owner, level in levels:
            owner.setLevel(level)


# vLLM's app, when built, imports model_hosting_container_standards for its
# SageMaker routes; that package's logging_config sets the root logger and its
# handlers to ERROR when first imported, unless LOG_LEVEL says otherwise (vLLM
# restores the handlers' levels, not the root's), and every log line of the
# worker's own below ERROR would be dropped from then on. Imported here first,
# with the levels kept: in the importing thread, before the engine build
# starts threads, whose log lines a concurrent import would drop.
with _root_logging_kept(), contextlib.suppress(ModuleNotFoundError):
    importlib.import_module("model_hosting_container_standards.logging_config")


def warm_chat_template(args: Namespace, vllm_config: Any) -> None:
    """Fill vLLM's caches of the chat template and its content format, which
    the app's renderer warm-up (in ``init_app_state``) reads: resolving the
    template loads the model's processor, the largest part of the app's
    start-up. The engine's renderer holds the same tokenizer (vLLM caches it
    per model config), so the caches' keys match; on a miss the warm-up just
    does the work again. Only for vLLM's HF renderer: the others resolve
    their templates their own way."""
    renderer_mode = _tokenizer_args(vllm_config.model_config)[0]
    if not issubclass(_renderers.load_renderer_cls(renderer_mode), _HfRenderer):
        return
    tokenizer = cached_tokenizer_from_config(vllm_config.model_config)
    if tokenizer is None:  # --skip-tokenizer-init: no chat template to resolve
        return
    _resolve_content_format(
        chat_template=_load_chat_template(args.chat_template),
        tools=None,
        given_format=args.chat_template_content_format,
        tokenizer=tokenizer,
        model_config=vllm_config.model_config,
    )


def likely_supported_tasks(vllm_config: Any) -> tuple[str, ...] | None:
    """What the engine will report from ``get_supported_tasks``, as far as
    its configuration tells before it is built: vLLM's fallback,
    ``("generate",)``, for a generative model; None for any other."""
    return FALLBACK_SUPPORTED_TASKS if vllm_config.model_config.runner_type == "generate" else None


class _ServerShim:
    """Stands in for the uvicorn server vLLM's error handlers expect on
    ``app.state.server``: setting ``should_exit`` (vLLM's reaction to a dead
    engine, in ``terminate_if_errored``) calls ``on_exit``."""

    def __init__(self, on_exit: Callable[[], object]) -> None:
        self._on_exit = on_exit

    @property
    def should_exit(self) -> bool:
        return False

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        if value:
            self._on_exit()


def on_engine_death(app: Any, callback: Callable[[], object]) -> None:
    """Call ``callback`` when vLLM's app sees the engine dead."""
    app.state.server = _ServerShim(callback)


# --- request and response models ---------------------------------------------

# The type of one chat message as vLLM's chat API validates it: OpenAI's
# message types, vLLM's custom-role message and harmony's Message.
ChatMessage = _first(
    "ChatCompletionMessageParam",
    "vllm.renderers.chat_utils",
    "vllm.entrypoints.chat_utils",
)
# What vLLM's own checks raise for a bad request (the checks in
# StructuredOutputsParams.__post_init__, for one).
ClientError: type[Exception] = _first("VLLMClientError", "vllm.exceptions")

completion_request_model = _first(
    "CompletionRequest",
    "vllm.entrypoints.openai.completion.protocol",
    "vllm.entrypoints.openai.protocol",
)
chat_request_model = _first(
    "ChatCompletionRequest",
    "vllm.entrypoints.openai.chat_completion.protocol",
    "vllm.entrypoints.openai.protocol",
)
_stream_options = _first(
    "StreamOptions",
    "vllm.entrypoints.generate.base.protocol",
    "vllm.entrypoints.openai.engine.protocol",
    "vllm.entrypoints.openai.protocol",
)
_tokenize_request = _first(
    "TokenizeCompletionRequest",
    "vllm.entrypoints.serve.tokenize.protocol",
    "vllm.entrypoints.openai.protocol",
)
_tokenize_response = _first(
    "TokenizeResponse",
    "vllm.entrypoints.serve.tokenize.protocol",
    "vllm.entrypoints.openai.protocol",
)

# The request fields a native job is turned into (native.to_request).
COMPLETION_FIELDS_USED = ("model", "prompt", "max_tokens", "stream", "stream_options", "vllm_xargs")
CHAT_FIELDS_USED = (
    "model",
    "messages",
    "max_completion_tokens",
    "logprobs",
    "top_logprobs",
    "stream",
    "stream_options",
    "vllm_xargs",
)
STREAM_OPTIONS_USED = ("include_usage", "continuous_usage_stats")
# SamplingParams fields the native job format names itself.
SAMPLING_FIELDS_USED = ("max_tokens", "logprobs", "extra_args")
# /tokenize: the request that counts a prompt's tokens, and the answer's fields.
TOKENIZE_REQUEST_FIELDS = ("model", "prompt")
TOKENIZE_COUNT = "count"
TOKENIZE_MAX_MODEL_LEN = "max_model_len"

_fields(completion_request_model, *COMPLETION_FIELDS_USED)
_fields(chat_request_model, *CHAT_FIELDS_USED)
_fields(_stream_options, *STREAM_OPTIONS_USED)
_fields(_tokenize_request, *TOKENIZE_REQUEST_FIELDS)
_fields(_tokenize_response, TOKENIZE_COUNT, TOKENIZE_MAX_MODEL_LEN)


def request_fields(model: Any) -> frozenset[str]:
    """The field names of one of vLLM's request models."""
    return frozenset(model.model_fields)


def sampling_param_fields() -> list[str]:
    """The public fields of ``SamplingParams`` (a msgspec struct)."""
    return [name for name in SamplingParams.__struct_fields__ if not name.startswith("_")]


def sampling_param_types() -> dict[str, Any]:
    """The declared type of each public ``SamplingParams`` field."""
    import typing

    hints = typing.get_type_hints(SamplingParams, include_extras=True)
    return {name: hints[name] for name in sampling_param_fields() if name in hints}


if SamplingParams is not None:
    _missing.extend(
        f"SamplingParams.{name} (field)" for name in SAMPLING_FIELDS_USED if name not in sampling_param_fields()
    )


def _check(names: Iterable[str]) -> None:
    names = list(names)
    if names:
        raise ImportError(
            f"vLLM {vllm_version} lacks {len(names)} thing(s) the worker uses "
            "(handler/vllm_internals.py; docs/upgrading.md says what to do):\n  - " + "\n  - ".join(names)
        )


_check(_missing)
