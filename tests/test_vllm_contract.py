"""The contract between the worker and vLLM.

Every vLLM name, attribute, signature and response field the worker depends on
is listed in USES with the line that uses it; each is checked against the vLLM
installed, and a failure names the file and line. Scans keep the list
complete: only handler/vllm_internals.py imports vLLM, every ``vi.<name>`` the
code uses is listed, no vLLM object is read with a getattr default, and every
``args.<dest>`` the worker reads is a dest of vLLM's serve parser. The steps of
vLLM's server that ``vi.build_async_llm`` copies are pinned, so a new step in
vLLM fails here by name. The rest is behaviour on the real engine: the output
loops run before the first request, and a dead EngineCore is noticed both by
the worker's watchdog and by vLLM's own ``app.state.server`` path.

docs/upgrading.md says how to read a failure.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import importlib.util
import inspect
import re
import signal
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from handler.config import CPU_DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*ROOT.glob("handler/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("builder/*.py")])
INTERNALS = ROOT / "handler" / "vllm_internals.py"


@cache
def internals() -> ModuleType:
    """handler.vllm_internals, executed apart: when vLLM lacks something the
    module's import fails at its end, but every name it looked up is still
    here (None where missing), so each USES check below can name its line."""
    spec = importlib.util.spec_from_file_location("vllm_internals_under_test", INTERNALS)
    module = importlib.util.module_from_spec(spec)
    errors = []
    try:
        spec.loader.exec_module(module)
    except ImportError as error:
        errors.append(str(error))
    try:
        module.load_app()  # the app group, which the import leaves to the engine boot
    except ImportError as error:
        errors.append(str(error))
    if errors:
        module.import_error = ImportError("\n".join(errors))
    return module


# --- checks ----------------------------------------------------------------


def resolve(vi: ModuleType, path: str) -> Any:
    """``vi``'s ``a.b.c``; fails naming the first part vLLM lacks."""
    head, *rest = path.split(".")
    value = getattr(vi, head)
    assert value is not None, f"vLLM has no {head} in any place vllm_internals looks"
    for i, part in enumerate(rest):
        assert hasattr(value, part), f"vLLM's {'.'.join([head, *rest[:i]])} has no {part}"
        value = getattr(value, part)
    return value


def has(*paths: str) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        for path in paths:
            resolve(vi, path)

    check.__doc__ = ", ".join(paths)
    return check


def fields(model: str, *names: str) -> Callable[[ModuleType], None]:
    """The pydantic model (or msgspec struct) declares each field."""

    def check(vi: ModuleType) -> None:
        cls = resolve(vi, model)
        declared = cls.model_fields if hasattr(cls, "model_fields") else cls.__struct_fields__
        lacking = [name for name in names if name not in declared]
        assert not lacking, f"vLLM's {cls.__qualname__} has no field {', '.join(lacking)}"

    check.__doc__ = f"{model} fields {', '.join(names)}"
    return check


def takes(function: str, *names: str, count: int | None = None) -> Callable[[ModuleType], None]:
    """The function takes each keyword (and ``count`` positional arguments)."""

    def check(vi: ModuleType) -> None:
        params = inspect.signature(resolve(vi, function)).parameters
        lacking = [name for name in names if name not in params]
        assert not lacking, f"vLLM's {function} takes no {', '.join(lacking)}: its parameters are {list(params)}"
        if count is not None:  # called with `count` positional arguments
            positional = [p for p in params.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
            required = [p for p in positional if p.default is p.empty]
            assert len(required) <= count <= len(positional), (
                f"vLLM's {function} now takes {[p.name for p in positional]}, {len(required)} of them required"
            )

    check.__doc__ = f"{function}({', '.join(names)})"
    return check


def code_uses(function: str, *names: str) -> Callable[[ModuleType], None]:
    """The function's code (nested functions included) still uses each name:
    an attribute set in ``__init__``, or one a vLLM function reads or sets."""

    def check(vi: ModuleType) -> None:
        code = inspect.unwrap(resolve(vi, function)).__code__
        used = set(code.co_names) | {n for c in code.co_consts if inspect.iscode(c) for n in c.co_names}
        lacking = [name for name in names if name not in used]
        assert not lacking, f"vLLM's {function} no longer uses .{', .'.join(lacking)}"

    check.__doc__ = f"{function} uses {', '.join(names)}"
    return check


def dests(*names: str) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        lacking = [name for name in names if name not in serve_dests()]
        assert not lacking, f"vLLM's serve parser has no dest {', '.join(lacking)}"

    check.__doc__ = f"serve dests {', '.join(names)}"
    return check


def choice(dest: str, value: str) -> Callable[[ModuleType], None]:
    """The serve parser's option for ``dest`` takes ``value`` (a default set
    with set_defaults is not checked against the choices by argparse)."""

    def check(vi: ModuleType) -> None:
        parser = vi.make_arg_parser(vi.FlexibleArgumentParser(prog="test"))
        [action] = [action for action in parser._actions if action.dest == dest] or [None]
        assert action is not None, f"vLLM's serve parser has no dest {dest}"
        assert value in (action.choices or ()), (
            f"vLLM's --{dest.replace('_', '-')} takes {action.choices}, not {value!r}"
        )

    check.__doc__ = f"--{dest.replace('_', '-')} {value}"
    return check


def both(*checks: Callable[[ModuleType], None]) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        for one in checks:
            one(vi)

    check.__doc__ = "; ".join(one.__doc__ or "" for one in checks)
    return check


def is_subclass(path: str, base: type) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        assert issubclass(resolve(vi, path), base), f"vLLM's {path} is no longer a {base.__name__}"

    check.__doc__ = f"{path} is a {base.__name__}"
    return check


def dataclass_fields(path: str, *names: str) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        declared = {field.name for field in dataclasses.fields(resolve(vi, path))}
        lacking = [name for name in names if name not in declared]
        assert not lacking, f"vLLM's {path} has no field {', '.join(lacking)}"

    check.__doc__ = f"{path} fields {', '.join(names)}"
    return check


def module_has(path: str, *names: str) -> Callable[[ModuleType], None]:
    """The module that defines ``path`` (a class) has each of ``names``."""

    def check(vi: ModuleType) -> None:
        module = sys.modules[resolve(vi, path).__module__]
        lacking = [name for name in names if not hasattr(module, name)]
        assert not lacking, f"vLLM's {module.__name__} has no {', '.join(lacking)}"

    check.__doc__ = f"{path}'s module has {', '.join(names)}"
    return check


def cpu_platform_rules() -> Callable[[ModuleType], None]:
    """The two rules of vLLM's CPU configuration step that vi.CPU_SINGLE_PROCESS
    answers: it keeps the single-process executor when
    VLLM_ENABLE_V1_MULTIPROCESSING is "0", and it sets the start method to
    spawn (which the engine build sets back to fork after that step)."""

    def check(vi: ModuleType) -> None:
        assert vi.current_platform.is_cpu(), "the contract tests run on vLLM's CPU build"
        assert vi.CPU_SINGLE_PROCESS == {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_WORKER_MULTIPROC_METHOD": "fork"}
        source = inspect.getsource(type(vi.current_platform).check_and_update_config).replace("'", '"')
        assert '"VLLM_ENABLE_V1_MULTIPROCESSING", "1") == "1"' in source and '== "uni"' in source, (
            "vLLM's CpuPlatform.check_and_update_config no longer keeps 'uni' when VLLM_ENABLE_V1_MULTIPROCESSING=0"
        )
        assert 'os.environ["VLLM_WORKER_MULTIPROC_METHOD"] = "spawn"' in source, (
            "vLLM's CpuPlatform.check_and_update_config no longer sets the start method"
        )

    check.__doc__ = "CpuPlatform's executor and start-method rules"
    return check


def model_infos_directory(name: str) -> Callable[[ModuleType], None]:
    """vLLM keeps its model-class facts in VLLM_CACHE_ROOT/<name> (caches.py seeds it)."""

    def check(vi: ModuleType) -> None:
        import vllm.envs

        directory = resolve(vi, "_LazyRegisteredModel")._get_cache_dir()
        assert directory == Path(vllm.envs.VLLM_CACHE_ROOT) / name, f"vLLM's model-class cache is now {directory}"

    check.__doc__ = f"VLLM_CACHE_ROOT/{name}"
    return check


def vllm_env(name: str) -> Callable[[ModuleType], None]:
    def check(vi: ModuleType) -> None:
        import vllm.envs

        assert name in vllm.envs.environment_variables, f"vLLM no longer reads {name}"

    check.__doc__ = f"vLLM reads {name}"
    return check


def cuda_platform_without_nvml(name: str) -> Callable[[ModuleType], None]:
    """vLLM's CUDA platform without NVML is still the class ``name`` (read
    from its source: vllm.platforms.cuda does not import on the CPU build)."""

    def check(vi: ModuleType) -> None:
        import vllm.platforms

        source = (Path(vllm.platforms.__file__).parent / "cuda.py").read_text()
        assert f"class {name}(" in source, f"vLLM's CUDA platform without NVML is no longer {name}"
        assert vi._CUDA_WITHOUT_NVML == name

    check.__doc__ = f"vllm.platforms.cuda.{name}"
    return check


def headless_node() -> Callable[[ModuleType], None]:
    """vi.start_headless and vi.wait_for_a_worker_to_end copy the branch of
    vLLM's ``run_headless`` for a node past the first of a group (``vllm serve
    --headless``): its configuration with headless=True, its executor without
    the monitor thread, and the monitor's wait on the workers' sentinels."""

    def check(vi: ModuleType) -> None:
        from vllm.entrypoints.cli import serve
        from vllm.v1.executor import multiproc_executor

        source = inspect.getsource(serve.run_headless)
        for step in (
            "vllm.AsyncEngineArgs.from_cli_args(args)",
            "propagate_flash_late_interaction(args, engine_args)",
            "usage_context=usage_context, headless=True",
            "if parallel_config.node_rank_within_dp > 0:",
            "MultiprocExecutor(vllm_config, monitor_workers=False)",
            "executor.start_worker_monitor(inline=True)",
        ):
            assert step in source, f"vLLM's run_headless no longer has {step!r}: compare it with vi.start_headless"
        monitor = inspect.getsource(multiproc_executor.MultiprocExecutor.start_worker_monitor)
        assert "h.proc.sentinel for h in workers" in monitor, "vLLM's worker monitor no longer waits on the sentinels"
        assert "proc" in {field.name for field in dataclasses.fields(multiproc_executor.WorkerProcHandle)}

    check.__doc__ = "run_headless's steps for a node past the first"
    return check


@cache
def serve_dests() -> frozenset[str]:
    vi = internals()
    parser = vi.make_arg_parser(vi.FlexibleArgumentParser(prog="test"))
    return frozenset(action.dest for action in parser._actions)


# --- what the worker uses, where ---------------------------------------------


@dataclass(frozen=True)
class Use:
    file: str
    snippet: str  # a piece of the line that uses it
    check: Callable[[ModuleType], None]


USES = [
    # engine.py: build the engine the way vLLM's server does, start it, watch it
    Use("handler/config.py", "vi.current_platform.is_cpu()", has("current_platform.is_cpu")),
    Use("handler/engine.py", "vi.engine_dead(ready.llm)", has("AsyncLLM.errored", "AsyncLLM.dead_error")),
    Use(
        "handler/engine.py",
        "vi.import_parser_plugins(args)",
        both(
            has("ToolParserManager.import_tool_parser", "ReasoningParserManager.import_reasoning_parser"),
            dests("tool_parser_plugin", "reasoning_parser_plugin"),
        ),
    ),
    Use(
        "handler/engine.py",
        "llm = self._llm = vi.build_async_llm(args, on_config=on_config)",
        both(
            has(
                "AsyncEngineArgs.from_cli_args",
                "AsyncEngineArgs.create_engine_config",
                "UsageContext.OPENAI_API_SERVER",
                "propagate_flash_late_interaction",
            ),
            takes("AsyncEngineArgs.create_engine_config", "usage_context"),
            takes("propagate_flash_late_interaction", "args", "engine_args", count=2),
            takes(
                "AsyncLLM.from_vllm_config",
                "vllm_config",
                "usage_context",
                "enable_log_requests",
                "aggregate_engine_logging",
                "disable_log_stats",
            ),
        ),
    ),
    Use(
        "handler/engine.py",
        "    vi.load_app()",
        has("_build_app", "init_app_state", "terminate_if_errored", "_engine_error_handler", "SERVER_FUNCTIONS"),
    ),
    # engine.py's draft_beside: the app's start-up work that needs no engine
    Use(
        "handler/engine.py",
        "vi.warm_chat_template(args, vllm_config)",
        both(
            has("cached_tokenizer_from_config", "_load_chat_template", "_renderers.load_renderer_cls"),
            takes("_resolve_content_format", "chat_template", "tools", "given_format", "tokenizer", "model_config"),
            dests("chat_template", "chat_template_content_format"),
            # the warm-up it runs ahead of: the app's renderer, with the same template and format
            code_uses("init_app_state", "load_chat_template", "chat_template_content_format", "warmup"),
            code_uses("_HfRenderer.render_messages", "resolve_chat_template_content_format"),
            takes("_tokenizer_args", "config", count=1),
        ),
    ),
    Use(
        "handler/engine.py",
        "tasks = vi.likely_supported_tasks(vllm_config)",
        both(has("FALLBACK_SUPPORTED_TASKS"), code_uses("ModelConfig.__post_init__", "runner_type")),
    ),
    Use(
        "handler/engine.py",
        "vi.build_app(args, tasks, vllm_config.model_config)",
        takes("_build_app", "args", "supported_tasks", "model_config", count=3),
    ),
    Use("handler/engine.py", "vi.freeze_gc_heap()", code_uses("_app_lifespan", "freeze_gc_heap")),
    Use("handler/engine.py", "self._llm.shutdown()", has("AsyncLLM.shutdown")),
    Use(
        "handler/engine.py",
        "await vi.start_async_llm(llm)",
        both(
            has("AsyncLLM._run_output_handler", "AsyncLLM.reset_mm_cache", "_AsyncMPClient._ensure_output_queue_task"),
            code_uses("AsyncLLM.__init__", "engine_core", "output_handler"),
            code_uses("_AsyncMPClient._ensure_output_queue_task", "resources", "output_queue_task"),
        ),
    ),
    Use("handler/engine.py", "await llm.get_supported_tasks()", has("AsyncLLM.get_supported_tasks")),
    Use(
        "handler/engine.py",
        "vi.build_app(args, supported_tasks, llm.model_config)",
        both(
            takes("_build_app", "args", "supported_tasks", "model_config", count=3),
            code_uses("AsyncLLM.__init__", "model_config"),
        ),
    ),
    Use(
        "handler/engine.py",
        "await vi.init_app_state(llm, app.state, args, supported_tasks)",
        takes("init_app_state", count=4),
    ),
    Use(
        "handler/engine.py",
        "vi.on_engine_death(app,",
        both(
            code_uses("terminate_if_errored", "should_exit", "errored", "is_running"),
            code_uses("_engine_error_handler", "terminate_if_errored", "server"),
        ),
    ),
    # config.py: the engine sized for the endpoint; one process for one CPU model worker
    Use(
        "handler/config.py",
        "if not settings.cap_max_num_seqs or vi.batch_size_set(args):",
        both(
            dests("max_num_seqs", "cudagraph_capture_sizes", "max_cudagraph_capture_size", "compilation_config"),
            dataclass_fields("_CompilationConfig", "cudagraph_capture_sizes", "max_cudagraph_capture_size"),
        ),
    ),
    Use(
        "handler/config.py",
        "default = vi.default_max_num_seqs(args)",
        both(
            takes("AsyncEngineArgs.get_batch_defaults", "world_size", count=1),
            has("UsageContext.OPENAI_API_SERVER"),
            dests("tensor_parallel_size", "pipeline_parallel_size"),
        ),
    ),
    Use(
        "handler/config.py",
        "config.environment.update(vi.CPU_SINGLE_PROCESS)",
        cpu_platform_rules(),
    ),
    Use(
        "handler/plan.py",
        "uncapped = vi.capture_sizes(gpu_default_seqs, gpu_default_tokens)",
        both(
            has("_VllmConfig._set_cudagraph_sizes", "_CUDAGraphMode.FULL_AND_PIECEWISE"),
            dataclass_fields("_CompilationConfig", "cudagraph_mode", "cudagraph_capture_sizes"),
            code_uses(
                "_VllmConfig._set_cudagraph_sizes",
                "model_config",
                "enforce_eager",
                "scheduler_config",
                "max_num_seqs",
                "max_num_batched_tokens",
                "uniform_decode_query_len",
            ),
        ),
    ),
    # cluster.py: a group of nodes (vLLM's --nnodes), headless past node 0
    Use(
        "handler/cluster.py",
        'defaults: dict[str, Any] = {"nnodes": self.nodes, "node_rank": self.rank, "master_addr": self.leader}',
        dests("nnodes", "node_rank", "master_addr", "master_port", "tensor_parallel_size", "pipeline_parallel_size"),
    ),
    Use("handler/cluster.py", 'environment = {"VLLM_HOST_IP": self.node_address}', vllm_env("VLLM_HOST_IP")),
    Use(
        "handler/cluster.py",
        "executor = vi.start_headless(args)",
        both(
            has("AsyncEngineArgs.from_cli_args", "propagate_flash_late_interaction", "UsageContext.OPENAI_API_SERVER"),
            takes("AsyncEngineArgs.create_engine_config", "usage_context", "headless"),
            headless_node(),
        ),
    ),
    Use("handler/cluster.py", "vi.wait_for_a_worker_to_end(executor)", headless_node()),
    # parsers.py: the tool-call and reasoning parsers chosen from the chat template
    Use(
        "handler/parsers.py",
        "vi.tool_parser_names()",
        both(has("ToolParserManager.list_registered"), dests("tool_call_parser", "enable_auto_tool_choice")),
    ),
    Use(
        "handler/parsers.py",
        "vi.reasoning_parser_names()",
        both(has("ReasoningParserManager.list_registered"), dests("reasoning_parser")),
    ),
    Use(
        "handler/parsers.py",
        "return vi.load_chat_template(args.chat_template)",
        both(has("_load_chat_template"), dests("chat_template", "tokenizer", "tokenizer_revision", "hf_token")),
    ),
    Use("handler/parsers.py", 'logger.warning("vLLM %s has no parser named %s', has("vllm_version")),
    Use(
        "handler/config.py",
        'TOOL_DEFAULTS: dict[str, Any] = {"tool_strict_level": "parameter"}',
        choice("tool_strict_level", "parameter"),
    ),
    Use("handler/caches.py", 'MODEL_INFOS = "modelinfos"', model_infos_directory("modelinfos")),
    Use("handler/caches.py", 'STARTUP_PLAN = "VLLM_ENABLE_STARTUP_PLAN"', vllm_env("VLLM_ENABLE_STARTUP_PLAN")),
    Use(
        "handler/vllm_internals.py",
        '_CUDA_WITHOUT_NVML = "NonNvmlCudaPlatform"',
        cuda_platform_without_nvml("NonNvmlCudaPlatform"),
    ),
    # builder/bake_vllm_cache.py: vLLM's model-class cache, filled at image build
    Use(
        "builder/bake_vllm_cache.py",
        "inspected, failed = vi.inspect_model_classes()",
        both(
            has("_ModelRegistry.models", "_LazyRegisteredModel.inspect_model_cls", "_load_general_plugins"),
            dataclass_fields("_LazyRegisteredModel", "module_name", "class_name"),
            code_uses("_LazyRegisteredModel.inspect_model_cls", "_run_in_subprocess", "_save_modelinfo_to_cache"),
            module_has("_LazyRegisteredModel", "_run_in_subprocess"),
        ),
    ),
    # flags.py: vLLM's serve parser builds the namespace
    Use(
        "handler/flags.py",
        "vi.serve_parser(prog=",
        both(
            takes("make_arg_parser", count=1),
            is_subclass("FlexibleArgumentParser", argparse.ArgumentParser),
            dests("model_tag", "model"),
        ),
    ),
    Use("handler/flags.py", "vi.parser_actions(parser):", code_uses("argparse._ActionsContainer.__init__", "_actions")),
    Use("handler/flags.py", "if vi.is_help_action(action)", has("argparse._HelpAction")),
    Use("handler/flags.py", "if vi.is_append_action(self.action):", has("argparse._AppendAction")),
    Use(
        "handler/flags.py",
        "return isinstance(self.action, argparse.BooleanOptionalAction)",
        has("argparse.BooleanOptionalAction"),
    ),
    Use("handler/flags.py", "vi.raise_on_parse_error(parser, fail)", has("argparse.ArgumentParser.error")),
    Use("handler/flags.py", "vi.apply_model_tag(args)", dests("model_tag", "model")),
    Use("handler/flags.py", "vi.validate_parsed_serve_args(args)", takes("validate_parsed_serve_args", count=1)),
    Use("handler/flags.py", 'f"engine configuration (vLLM {vi.vllm_version})', has("vllm_version")),
    # native.py: native jobs as OpenAI requests, checked against vLLM's types
    Use(
        "handler/native.py",
        "vi.request_fields(vi.completion_request_model) & vi.request_fields(vi.chat_request_model)",
        has("completion_request_model.model_fields", "chat_request_model.model_fields"),
    ),
    Use(
        "handler/native.py",
        'RENAMED = {"extra_args": "vllm_xargs"}',
        both(
            fields("SamplingParams", "extra_args"),
            fields("completion_request_model", "vllm_xargs"),
            fields("chat_request_model", "vllm_xargs"),
        ),
    ),
    Use("handler/native.py", "for name in vi.sampling_param_fields()", has("SamplingParams.__struct_fields__")),
    Use(
        "handler/native.py",
        "declared = vi.sampling_param_types().get(name)",
        fields("SamplingParams", "max_tokens", "logprobs"),
    ),
    Use("handler/native.py", "TypeAdapter(vi.ChatMessage)", has("ChatMessage")),
    Use(
        "handler/native.py",
        "except (vi.ClientError, ValueError, TypeError) as error:",
        is_subclass("ClientError", Exception),
    ),
    Use(
        "handler/native.py",
        'body["max_completion_tokens"] = max_tokens',
        fields("chat_request_model", "model", "messages", "max_completion_tokens"),
    ),
    Use(
        "handler/native.py", 'body["top_logprobs"] = logprobs', fields("chat_request_model", "logprobs", "top_logprobs")
    ),
    Use(
        "handler/native.py",
        'body["max_tokens"] = max_tokens',
        fields("completion_request_model", "model", "prompt", "max_tokens"),
    ),
    Use(
        "handler/native.py",
        'body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}',
        both(
            fields("completion_request_model", "stream", "stream_options"),
            fields("chat_request_model", "stream", "stream_options"),
            fields("_stream_options", "include_usage", "continuous_usage_stats"),
        ),
    ),
    Use("handler/native.py", "for field in vi.TOKENIZE_REQUEST_FIELDS", fields("_tokenize_request", "model", "prompt")),
    Use(
        "handler/native.py",
        "int(tokenized[vi.TOKENIZE_MAX_MODEL_LEN]) - int(tokenized[vi.TOKENIZE_COUNT])",
        fields("_tokenize_response", "max_model_len", "count"),
    ),
    # load_balancing.py: vLLM's uvicorn flags
    Use("handler/load_balancing.py", "args.uvicorn_log_level", dests("uvicorn_log_level")),
    Use("handler/load_balancing.py", "args.disable_uvicorn_access_log", dests("disable_uvicorn_access_log")),
    # bench: generation straight on AsyncLLM
    Use(
        "bench/common.py",
        "params = vi.SamplingParams(",
        fields("SamplingParams", "max_tokens", "ignore_eos", "temperature", "output_kind"),
    ),
    Use(
        "bench/common.py",
        "output_kind=vi.RequestOutputKind.DELTA",
        has("RequestOutputKind.DELTA", "AsyncLLM.generate"),
    ),
    Use(
        "bench/load_balancing.py",
        "llm = AsyncLLM.from_engine_args(engine_args)",
        both(
            has("AsyncLLM.from_engine_args"),
            takes("AsyncEngineArgs", "model", "served_model_name", *CPU_DEFAULTS),
        ),
    ),
    Use(
        "bench/cold_start.py",
        "llm = await asyncio.to_thread(AsyncLLM.from_engine_args, engine_args)",
        both(
            has("AsyncLLM.from_engine_args", "RequestOutputKind.DELTA"),
            takes("AsyncEngineArgs", "model", "served_model_name", *CPU_DEFAULTS),
        ),
    ),
]


def where(use: Use) -> str:
    """``file:line`` of the use (fails when the snippet left the file)."""
    for number, line in enumerate((ROOT / use.file).read_text().splitlines(), 1):
        if use.snippet in line:
            return f"{use.file}:{number}"
    pytest.fail(f"{use.file} no longer has {use.snippet!r}: update USES in tests/test_vllm_contract.py")


@pytest.mark.vllm
@pytest.mark.parametrize("use", USES, ids=lambda use: f"{use.file}:{use.snippet[:40]}")
def test_each_use_holds_in_the_installed_vllm(use: Use):
    line = where(use)
    try:
        use.check(internals())
    except AssertionError as error:
        pytest.fail(f"{line} ({use.snippet}): {error}", pytrace=False)


@pytest.mark.vllm
def test_vllm_internals_imports():
    """The module's own checks pass (its ImportError lists all that moved)."""
    error = getattr(internals(), "import_error", None)
    assert error is None, str(error)


# --- scans -----------------------------------------------------------------

# Bare-vLLM floors in the benchmarks: they must not pay for the worker's
# imports, so they import vLLM themselves; their names are still in USES.
BARE_FLOORS = {
    ("bench/cold_start.py", "bare"),
    ("bench/load_balancing.py", "bare_boot"),
    ("bench/boot_steps.py", "vllm_engine_import"),
    ("bench/frontend.py", "bare"),
}


def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def functions_around(tree: ast.Module) -> dict[ast.AST, str]:
    """Each node's enclosing top-level function name."""
    owner: dict[ast.AST, str] = {}
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(top):
                owner[node] = top.name
    return owner


def test_only_vllm_internals_imports_vllm():
    found = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        if path == INTERNALS:
            continue
        tree = parsed(path)
        owner = functions_around(tree)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            if any(n == "vllm" or n.startswith("vllm.") for n in names) and (rel, owner.get(node)) not in BARE_FLOORS:
                found.append(f"{rel}:{node.lineno} imports {', '.join(names)}")
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("importlib.import_module", "__import__"):
                if node.args and isinstance(node.args[0], ast.Constant) and str(node.args[0].value).startswith("vllm"):
                    found.append(f"{rel}:{node.lineno} imports {node.args[0].value}")
    assert not found, "only handler/vllm_internals.py may import vLLM:\n" + "\n".join(found)


def test_every_vi_name_used_is_in_uses():
    listed = {name for use in USES for name in re.findall(r"\bvi\.(\w+)", use.snippet)}
    unlisted = []
    for path in SOURCES:
        for node in ast.walk(parsed(path)):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "vi":
                if node.attr not in listed:
                    unlisted.append(f"{path.relative_to(ROOT)}:{node.lineno} vi.{node.attr}")
    assert not unlisted, "add a USES entry (the line and what it needs of vLLM) for:\n" + "\n".join(unlisted)


# getattr with a default on things that are not vLLM's: (file, snippet, why).
GETATTR_DEFAULTS_ALLOWED = [
    ("handler/embedded_model.py", 'getattr(tokenizer, "chat_template", None)', "a transformers tokenizer"),
    ("handler/embedded_model.py", 'hasattr(config, "quantization_config")', "a transformers config"),
    ("handler/jobs.py", 'getattr(route, "body_field", None)', "FastAPI: only APIRoute has a body"),
    ("handler/routes.py", 'getattr(route, "methods", None)', "Starlette: mounts have no methods"),
    ("handler/routes.py", 'getattr(route, "path", None)', "Starlette: routes of any kind"),
    ("handler/routes.py", 'getattr(candidate, "methods", ())', "Starlette: mounts have no methods"),
    ("handler/streaming.py", 'getattr(iterator, "aclose", None)', "any async iterator"),
]


def test_no_getattr_default_on_vllm_objects():
    found = []
    for path in SOURCES:
        rel = str(path.relative_to(ROOT))
        lines = path.read_text().splitlines()
        for node in ast.walk(parsed(path)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
            ):
                if node.func.id == "getattr" and len(node.args) < 3:
                    continue
                line = lines[node.lineno - 1]
                if path == INTERNALS and node.func.id == "hasattr":
                    continue  # the import-time checks themselves
                if not any(rel == f and snippet in line for f, snippet, _ in GETATTR_DEFAULTS_ALLOWED):
                    found.append(f"{rel}:{node.lineno}: {line.strip()}")
    assert not found, (
        "a vLLM attribute read with a default fails silently when vLLM renames it; read it through "
        "handler/vllm_internals.py (checked at import), or list a non-vLLM object here:\n" + "\n".join(found)
    )


# Modules whose `args` is their own command line, not vLLM's serve namespace.
OWN_COMMAND_LINE = {"handler/__main__.py"}


@pytest.mark.vllm
def test_every_args_dest_read_is_a_serve_dest():
    found = []
    for path in ROOT.glob("handler/*.py"):
        rel = str(path.relative_to(ROOT))
        if rel in OWN_COMMAND_LINE:
            continue
        for node in ast.walk(parsed(path)):
            if not isinstance(node, ast.Attribute):
                continue
            base = node.value
            is_args = (isinstance(base, ast.Name) and base.id == "args") or (
                isinstance(base, ast.Attribute) and base.attr == "args"
            )
            if is_args and node.attr not in serve_dests():
                found.append(f"{rel}:{node.lineno} args.{node.attr}")
    assert not found, "vLLM's serve parser has no such dest:\n" + "\n".join(found)


# --- the copy of vLLM's server steps ----------------------------------------

# Every call in vLLM's server functions that build the engine and the app, and
# what the worker does about it: "copied" (its last name is called by the
# worker's copy: vi.build_async_llm, vi.start_async_llm, vi.import_parser_plugins,
# Engine._build or Engine._start), or why it is not needed.
SERVER_STEPS: dict[str, dict[str, str]] = {
    "build_async_engine_client": {
        "os.getenv": "copied",
        "logger.debug": "logging only",
        "multiprocessing.set_start_method": "copied",
        "multiprocessing.set_forkserver_preload": "copied",
        "forkserver.ensure_running": "copied",
        "AsyncEngineArgs.from_cli_args": "copied",
        "propagate_flash_late_interaction": "copied",
        "client_config.get": "API-server scale-out only (one process here)",
        "build_async_engine_client_from_engine_args": "copied: its steps are below",
    },
    "build_async_engine_client_from_engine_args": {
        "engine_args.create_engine_config": "copied",
        "dict": "API-server scale-out only",
        "client_config.pop": "API-server scale-out only",
        "AsyncLLM.from_vllm_config": "copied",
        "async_llm.reset_mm_cache": "copied",
        "async_llm.shutdown": "Engine._stop_llm shuts it down (at exit, SIGTERM, a fatal error)",
    },
    "run_server_worker": {
        "ToolParserManager.import_tool_parser": "copied",
        "ReasoningParserManager.import_reasoning_parser": "copied",
        "len": "copied",
        "client_config.pop": "API-server scale-out only",
        "build_async_engine_client": "copied: its steps are above",
        "build_and_serve": "copied: its steps are below",
        "sock.close": "no socket: the app is called in memory",
    },
    "build_and_serve": {
        "get_uvicorn_log_config": "no uvicorn in front of vLLM's app (load_balancing.py applies the log flags)",
        "engine_client.get_supported_tasks": "copied",
        "logger.info": "logging only",
        "build_app": "copied",
        "init_app_state": "copied",
        "serve_http": "no HTTP server: the app is called in memory (load_balancing.py serves its own)",
    },
}
# The keywords vLLM passes AsyncLLM.from_vllm_config, and why the copy leaves
# some out.
FROM_VLLM_CONFIG_KEYWORDS = {
    "vllm_config": "copied",
    "usage_context": "copied",
    "enable_log_requests": "copied",
    "aggregate_engine_logging": "copied",
    "disable_log_stats": "copied",
    "client_addresses": "API-server scale-out only",
    "client_count": "API-server scale-out only",
    "client_index": "API-server scale-out only",
}


def calls(function: Any) -> dict[str, ast.Call]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(function))))
    return {ast.unparse(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}


# The worker's copy of those steps, read from source (importing handler.engine
# would stop at vllm_internals' ImportError when vLLM lacks something).
WORKER_COPY = {
    "handler/vllm_internals.py": ("build_async_llm", "start_async_llm", "import_parser_plugins"),
    "handler/engine.py": ("_build", "_start"),
}


def worker_calls() -> set[str]:
    """The last name of every call the worker's copy makes."""
    names = set()
    for file, functions in WORKER_COPY.items():
        for node in ast.walk(parsed(ROOT / file)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in functions:
                names |= {ast.unparse(c.func).rsplit(".", 1)[-1] for c in ast.walk(node) if isinstance(c, ast.Call)}
    return names


@pytest.mark.vllm
@pytest.mark.parametrize("name", sorted(SERVER_STEPS))
def test_the_copy_of_vllms_server_steps_is_complete(name: str):
    function = internals().SERVER_FUNCTIONS[name]
    assert function is not None, f"vLLM has no {name} in any place vllm_internals looks"
    made = set(calls(function))
    recorded = SERVER_STEPS[name]
    new = sorted(made - set(recorded))
    assert not new, (
        f"vLLM's {name} ({inspect.getsourcefile(function)}) now calls {', '.join(new)}: copy each into "
        "vi.build_async_llm / vi.start_async_llm (handler/vllm_internals.py), or record in SERVER_STEPS why not"
    )
    gone = sorted(set(recorded) - made)
    assert not gone, f"vLLM's {name} no longer calls {', '.join(gone)}: drop it from the copy and from SERVER_STEPS"
    copied = {call.rsplit(".", 1)[-1] for call, how in recorded.items() if how == "copied"}
    missing = sorted(copied - worker_calls())
    assert not missing, f"the worker's copy of {name} does not call {', '.join(missing)}"


@pytest.mark.vllm
def test_the_copy_passes_what_vllm_passes_to_from_vllm_config():
    vi = internals()
    function = vi.SERVER_FUNCTIONS["build_async_engine_client_from_engine_args"]
    assert function is not None, "vLLM has no build_async_engine_client_from_engine_args where vllm_internals looks"
    passed = {keyword.arg for keyword in calls(function)["AsyncLLM.from_vllm_config"].keywords}
    assert passed == set(FROM_VLLM_CONFIG_KEYWORDS), (
        f"vLLM now passes AsyncLLM.from_vllm_config {sorted(passed ^ set(FROM_VLLM_CONFIG_KEYWORDS))} "
        "differently: update vi.build_async_llm and FROM_VLLM_CONFIG_KEYWORDS"
    )
    ours = {keyword.arg for keyword in calls(vi.build_async_llm)["AsyncLLM.from_vllm_config"].keywords}
    assert ours == {k for k, how in FROM_VLLM_CONFIG_KEYWORDS.items() if how == "copied"}


# --- behaviour ---------------------------------------------------------------

# The app group: what `import handler.vllm_internals` leaves to vi.load_app.
APP_PROBE = """
import sys
import handler.vllm_internals as vi
print("imported:", sorted(m for m in (*vi._APP, *vi._LAUNCHER) if m in sys.modules))
# the modules load_app takes its names from: the first of each list that imports
app_module, launcher = (sys.modules[vi._first("__name__", *modules)] for modules in (vi._APP, vi._LAUNCHER))
del app_module.build_app
launcher.terminate_if_errored = lambda *args: None
try:
    vi.load_app()
except ImportError as error:
    print("error:", error)
"""


@pytest.mark.vllm
def test_the_app_is_imported_by_load_app_and_checked_like_the_rest():
    """Importing vllm_internals leaves vLLM's OpenAI app to vi.load_app (the
    engine boot runs it beside the engine build); load_app checks the app's
    names as the import checks the rest: one ImportError listing each."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", APP_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    imported = next(line for line in result.stdout.splitlines() if line.startswith("imported:"))
    assert imported == "imported: []", imported
    error = result.stdout.split("error:", 1)[1]
    assert "lacks" in error, error
    assert "\n  - build_app" in error and "uses .should_exit" in error, error


def test_the_app_built_beside_the_engine_build_is_the_one_served(engine):
    """The embedded model's engine reports the tasks vi.likely_supported_tasks
    foresaw, so the app built during the engine build (draft_beside) serves;
    otherwise the boot builds it again once the engine is up: still right,
    but slower."""
    assert engine.ready.drafted, "the boot rebuilt vLLM's app after the engine build"


# Building vLLM's app imports model_hosting_container_standards, whose import
# sets the root logger (and its handlers) to ERROR; in a fresh process, since
# that happens once per process.
ROOT_LOGGER_PROBE = """
import logging, os, sys
logging.basicConfig(level=logging.INFO)
import handler.vllm_internals as vi
from handler.config import engine_config
from handler.settings import Settings
vi.build_app(engine_config(Settings.from_env()).args, ("generate",), None)
root = logging.getLogger()
print("levels:", root.level, [handler.level for handler in root.handlers], flush=True)
os._exit(0)
"""


@pytest.mark.vllm
def test_building_the_app_leaves_the_worker_logging():
    """Building vLLM's app leaves the root logger's level and its handlers'
    as they were (vi imports the package that would change them first, with
    the levels kept): the worker's own INFO and WARNING lines (engine ready,
    stopping the engine's processes on SIGTERM) go on being logged after the
    app is built."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", ROOT_LOGGER_PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "levels: 20 [0]" in result.stdout, result.stdout


@pytest.mark.vllm
def test_a_parse_error_reaches_the_worker_not_sys_exit():
    """vLLM's parser reports a bad value through parser.error, which
    vi.raise_on_parse_error replaces."""
    vi = internals()
    parser = vi.serve_parser(prog="test")
    seen: list[str] = []

    def fail(message: str) -> None:
        seen.append(message)
        raise ValueError(message)

    vi.raise_on_parse_error(parser, fail)
    with pytest.raises(ValueError):
        parser.parse_args(["--max-model-len=abc"])
    assert seen and "max-model-len" in seen[0]
    args = parser.parse_args(["some/model"])
    vi.apply_model_tag(args)
    assert args.model == "some/model"


async def wait_for(condition: Callable[[], Any], seconds: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.1)


@pytest.mark.vllm
async def test_the_engine_is_watched_from_boot_and_its_death_is_noticed_twice():
    """A separate engine (the session's stays alive): its output loops run
    before any request; when its EngineCore is killed, the watchdog notices
    through vi.engine_dead, and vLLM's own error handler reaches the worker
    through app.state.server (vi.on_engine_death)."""
    from handler import asgi
    from handler import vllm_internals as vi
    from handler.engine import Engine
    from handler.settings import Settings

    reports: list[str] = []
    engine = Engine(Settings(fatal_exit_delay_s=0), on_fatal=reports.append)
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    try:
        ready = await engine.start()
        assert vi.output_loops_started(ready.llm), "the output loops wait for a first request"
        spawned = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
        assert spawned
        for process in spawned:
            process.send_signal(signal.SIGKILL)
        await wait_for(lambda: reports)
        assert "EngineDeadError" in reports[0], reports

        # vLLM's own path: its error handler sets app.state.server.should_exit
        told: list[bool] = []
        vi.on_engine_death(ready.app, lambda: told.append(True))
        body = {"model": ready.served_model, "prompt": "hi", "max_tokens": 1}
        response = await asgi.request(ready.app, "POST", "/v1/completions", body)
        assert response.status >= 500
        assert told, "vLLM's error handler did not set app.state.server.should_exit"
    finally:
        await engine.shutdown()
