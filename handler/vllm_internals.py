"""Every import of a vLLM internal lives here, with the module paths of
neighbouring vLLM releases as fallbacks.

vLLM moves its entrypoint modules between releases (the serve argument parser
moved in 0.29 and again in 0.33). Keeping the lookups in one place means an
upgrade is a one-module change, and everything else imports stable names.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "AsyncEngineArgs",
    "ChatMessage",
    "ClientError",
    "AsyncLLM",
    "FlexibleArgumentParser",
    "SamplingParams",
    "UsageContext",
    "build_app",
    "chat_request_model",
    "completion_request_model",
    "current_platform",
    "init_app_state",
    "make_arg_parser",
    "sampling_param_types",
    "validate_parsed_serve_args",
    "vllm_version",
]


def _first(attribute: str, *modules: str) -> Any:
    """``attribute`` from the first of ``modules`` that has it."""
    errors = []
    for name in modules:
        try:
            return getattr(importlib.import_module(name), attribute)
        except (ImportError, AttributeError) as error:
            errors.append(f"{name}: {error}")
    raise ImportError(f"vLLM has no {attribute} in any known place: " + "; ".join(errors))


# The `vllm serve` argument parser: 0.33+, 0.29-0.32, up to 0.28.
_CLI_ARGS = (
    "vllm.entrypoints.serve.cli_args",
    "vllm.entrypoints.launchers.cli_args",
    "vllm.entrypoints.openai.cli_args",
)
# The OpenAI FastAPI app and its state.
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

make_arg_parser = _first("make_arg_parser", *_CLI_ARGS)
validate_parsed_serve_args = _first("validate_parsed_serve_args", *_CLI_ARGS)
FlexibleArgumentParser = _first(
    "FlexibleArgumentParser", "vllm.utils.argparse_utils", "vllm.utils"
)
build_app = _first("build_app", *_APP)
init_app_state = _first("init_app_state", *_APP_STATE)
AsyncEngineArgs = _first("AsyncEngineArgs", "vllm.engine.arg_utils")
AsyncLLM = _first("AsyncLLM", "vllm.v1.engine.async_llm")
UsageContext = _first("UsageContext", "vllm.usage.usage_lib")
SamplingParams = _first("SamplingParams", "vllm.sampling_params", "vllm")
current_platform = _first("current_platform", "vllm.platforms")
vllm_version: str = _first("__version__", "vllm")

# The type of one chat message as vLLM's chat API validates it: OpenAI's
# message types, vLLM's custom-role message and harmony's Message.
ChatMessage = _first(
    "ChatCompletionMessageParam",
    "vllm.renderers.chat_utils",
    "vllm.entrypoints.chat_utils",
)
# What vLLM's own checks raise for a bad request (the checks in
# StructuredOutputsParams.__post_init__, for one); ValueError in a vLLM without it.
try:
    ClientError: type[Exception] = _first("VLLMClientError", "vllm.exceptions")
except ImportError:
    ClientError = ValueError

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


def sampling_param_fields() -> list[str]:
    """The public fields of ``SamplingParams`` (a msgspec struct in vLLM 0.32,
    a dataclass in some older releases)."""
    names = getattr(SamplingParams, "__struct_fields__", None)
    if names is None:
        import dataclasses

        names = [field.name for field in dataclasses.fields(SamplingParams)]
    return [name for name in names if not name.startswith("_")]


def sampling_param_types() -> dict[str, Any]:
    """The declared type of each public ``SamplingParams`` field."""
    import typing

    hints = typing.get_type_hints(SamplingParams, include_extras=True)
    return {name: hints[name] for name in sampling_param_fields() if name in hints}
