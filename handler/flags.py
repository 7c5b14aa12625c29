"""vLLM flags from environment variables.

Every ``vllm serve`` flag is reachable as its UPPER_SNAKE environment variable
(``MAX_MODEL_LEN`` -> ``--max-model-len``). The list of flags is read at run
time from vLLM's own argument parser, and the values are parsed by it too, so
the namespace produced here is exactly what ``vllm serve`` would have built from
the same command line. The engine and vLLM's OpenAI app are both built from it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from . import vllm_internals as vi
from .config import ALIASES, EXTRA_ARGS, extra_args, from_aliases
from .errors import ConfigError

logger = logging.getLogger(__name__)


# Names that worker-vllm documented for flags that older vLLM releases had.
# They are not a copy of vLLM's flag list: one that vLLM still has is simply
# used; one it no longer has gets a warning instead of silently doing nothing.
LEGACY_NAMES = frozenset(
    {
        "BLOCK_SIZE",
        "SWAP_SPACE",
        "USE_V2_BLOCK_MANAGER",
        "NUM_LOOKAHEAD_SLOTS",
        "TOKENIZER_POOL_SIZE",
        "TOKENIZER_POOL_TYPE",
        "TOKENIZER_POOL_EXTRA_CONFIG",
        "MAX_SEQ_LEN_TO_CAPTURE",
        "DISABLE_LOG_REQUESTS",
        "PREEMPTION_MODE",
        "SPECULATIVE_MODEL",
        "NUM_SPECULATIVE_TOKENS",
        "SPECULATIVE_DRAFT_TENSOR_PARALLEL_SIZE",
        "SPECULATIVE_MAX_MODEL_LEN",
        "SPECULATIVE_DISABLE_BY_BATCH_SIZE",
        "NGRAM_PROMPT_LOOKUP_MAX",
        "NGRAM_PROMPT_LOOKUP_MIN",
        "SPEC_DECODING_ACCEPTANCE_METHOD",
        "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_THRESHOLD",
        "TYPICAL_ACCEPTANCE_SAMPLER_POSTERIOR_ALPHA",
        "DISABLE_LOGPROBS_DURING_SPEC_DECODING",
        "LORA_EXTRA_VOCAB_SIZE",
        "LONG_LORA_SCALING_FACTORS",
        "QLORA_ADAPTER_NAME_OR_PATH",
        "GUIDED_DECODING_BACKEND",
        "MAX_CPU_LORAS",
        "MAX_PARALLEL_LOADING_WORKERS",
        "NUM_GPU_BLOCKS_OVERRIDE",
        "SCHEDULER_DELAY_FACTOR",
        "DISABLE_SLIDING_WINDOW",
        "ENABLE_PREFIX_CACHING",
        "MAX_LOGPROBS",
        "DISTRIBUTED_EXECUTOR_BACKEND",
        "DEFAULT_BATCH_SIZE",
        "DEFAULT_MIN_BATCH_SIZE",
        "DEFAULT_BATCH_SIZE_GROWTH_FACTOR",
        "RAW_OPENAI_OUTPUT",
        "OPENAI_RESPONSE_ROLE",
    }
)
# worker-vllm settings whose job a differently named setting of ours does.
REPLACED_BY = {
    "DEFAULT_BATCH_SIZE": "STREAM_BATCH_MAX_EVENTS",
    "DEFAULT_MIN_BATCH_SIZE": "STREAM_BATCH_MAX_EVENTS",
    "DEFAULT_BATCH_SIZE_GROWTH_FACTOR": "STREAM_BATCH_MAX_MS",
    "RAW_OPENAI_OUTPUT": "the OpenAI route's own output",
    "OPENAI_RESPONSE_ROLE": "the model's chat template",
}

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")
SECRET = re.compile(r"token|key|secret|password|credential", re.IGNORECASE)
REDACTED = "***"


@dataclass(frozen=True)
class Flag:
    """One ``vllm serve`` option and the environment variable that sets it."""

    env: str
    option: str
    action: argparse.Action

    @property
    def is_bool(self) -> bool:
        return self.action.nargs == 0

    @property
    def is_negatable(self) -> bool:
        return isinstance(self.action, argparse.BooleanOptionalAction)

    @property
    def is_list(self) -> bool:
        return self.action.nargs in ("+", "*") or vi.is_append_action(self.action)

    def argv(self, value: str) -> list[str]:
        """The command-line words for this flag given an env value."""
        if self.is_bool:
            lowered = value.strip().lower()
            if lowered in TRUE:
                return [self.option]
            if lowered in FALSE:
                return ["--no-" + self.option[2:]] if self.is_negatable else []
            raise ConfigError(f"{self.env}={value!r} is not a boolean: use one of " + "/".join(TRUE + FALSE))
        if self.is_list:
            words = list_words(value)
            if vi.is_append_action(self.action):
                return [arg for word in words for arg in (self.option, word)]
            return [self.option, *words]
        return [f"{self.option}={value}"]


def list_words(value: str) -> list[str]:
    """A list flag's words. A JSON array gives one word per item, an object
    one word (as JSON text): worker-vllm's
    ``LORA_MODULES='[{"name": "a", "path": "org/a"}]'``, which vLLM's
    ``--lora-modules`` reads one JSON object a word. Anything else is split
    as a shell would: ``SERVED_MODEL_NAME="a b"``, ``LORA_MODULES="a=/path"``."""
    text = value.strip()
    if text[:1] in ("[", "{"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return [text]
        if isinstance(parsed, list):
            return [item if isinstance(item, str) else json.dumps(item) for item in parsed]
    return shlex.split(value)


def new_parser() -> argparse.ArgumentParser:
    return vi.serve_parser(prog="python -m handler")


def env_name(option: str) -> str:
    return option.lstrip("-").replace("-", "_").upper()


def flags(parser: argparse.ArgumentParser) -> dict[str, Flag]:
    """Every long option of the parser, keyed by its environment variable."""
    table: dict[str, Flag] = {}
    for action in vi.parser_actions(parser):
        if vi.is_help_action(action) or not action.option_strings:
            continue
        long = [o for o in action.option_strings if o.startswith("--") and not o.startswith("--no-")]
        if not long:
            continue
        flag = Flag(env=env_name(long[0]), option=long[0], action=action)
        table.setdefault(flag.env, flag)
    return table


def is_secret(name: str) -> bool:
    return bool(SECRET.search(name))


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if is_secret(k) and v else v) for k, v in values.items()}


@dataclass
class EngineConfig:
    """The parsed namespace, and where each value came from."""

    args: argparse.Namespace
    sources: dict[str, str]  # dest -> the env var that set it
    defaults: dict[str, Any]  # vLLM's own defaults
    # vLLM environment variables this configuration sets where the user has
    # not; the engine build applies them (config.engine_config decides them)
    environment: dict[str, str] = field(default_factory=dict)

    def non_default(self) -> dict[str, Any]:
        return {
            dest: value
            for dest, value in sorted(vars(self.args).items())
            if dest in self.defaults and value != self.defaults[dest]
        }

    def describe(self) -> str:
        """The effective engine configuration as one log line, secrets redacted."""
        return f"engine configuration (vLLM {vi.vllm_version}): {redact(self.non_default())}"


def collect_env(environ: Mapping[str, str], table: Mapping[str, Flag]) -> dict[str, str]:
    """The non-empty env values that set flags, aliases resolved to flag names
    (``config.ALIASES``; a vLLM name wins over its worker-vllm alias)."""
    chosen = from_aliases(environ)
    for name in table:
        value = environ.get(name, "")
        if value != "":
            chosen[name] = value
    for name in sorted(LEGACY_NAMES - set(table)):
        if environ.get(name, "") != "":
            instead = REPLACED_BY.get(name)
            logger.warning(
                "%s is set, but vLLM %s has no --%s flag; it is ignored%s",
                name,
                vi.vllm_version,
                name.lower().replace("_", "-"),
                f" (use {instead})" if instead else "",
            )
    return chosen


def build_argv(environ: Mapping[str, str], table: Mapping[str, Flag]) -> tuple[list[str], dict[str, str]]:
    """Command-line words from the environment; returns them and, for each
    option, the env var that produced it."""
    argv: list[str] = []
    origin: dict[str, str] = {}
    for name, value in collect_env(environ, table).items():
        flag = table[name]
        words = flag.argv(value)
        argv += words
        origin[flag.option] = name
    argv += extra_args(environ)
    return argv, origin


def parse(
    environ: Mapping[str, str] | None = None,
    *,
    defaults: Mapping[str, Any] | None = None,
) -> EngineConfig:
    """Parse the environment into vLLM's serve namespace with vLLM's own parser.

    ``defaults`` replaces parser defaults (the worker's own defaults, such as
    the embedded model or ``enforce_eager`` on CPU). A bad value raises
    ``ConfigError`` naming the environment variable.
    """
    environ = os.environ if environ is None else environ
    parser = new_parser()
    vllm_defaults = {
        action.dest: action.default for action in vi.parser_actions(parser) if action.dest != argparse.SUPPRESS
    }
    if defaults:
        parser.set_defaults(**defaults)
    table = flags(parser)
    argv, origin = build_argv(environ, table)

    def fail(message: str) -> NoReturn:
        raise ConfigError(_explain(message, origin, environ))

    vi.raise_on_parse_error(parser, fail)
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # a parser path that exits without calling error()
        raise ConfigError(f"vLLM rejected the flags {_redact_argv(argv)}") from None
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(_explain(str(error), origin, environ)) from None
    vi.apply_model_tag(args)
    try:
        vi.validate_parsed_serve_args(args)
    except (ValueError, TypeError) as error:
        raise ConfigError(_explain(str(error), origin, environ)) from None
    sources = {table[name].action.dest: name for name in origin.values() if name in table}
    return EngineConfig(args=args, sources=sources, defaults=vllm_defaults)


def _explain(message: str, origin: Mapping[str, str], environ: Mapping[str, str]) -> str:
    """Rewrite a vLLM/argparse message so it names the env var and its value."""
    for option, name in origin.items():
        if re.search(re.escape(option) + r"(?![\w-])", message) or re.search(
            r"\b" + re.escape(option[2:].replace("-", "_")) + r"\b", message
        ):
            raw = environ.get(name) or environ.get(next((a for a, n in ALIASES.items() if n == name), ""), "")
            shown = REDACTED if is_secret(name) else repr(raw)
            return f"{name}={shown} is not valid: {_strip_usage(message)}"
    if EXTRA_ARGS in environ:
        return f"{EXTRA_ARGS}: {_strip_usage(message)}"
    return _strip_usage(message)


# What argparse's "invalid <type> value" means, by the type function's name.
EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "human_readable_int": "an integer such as 4096 or 4k",
    "human_readable_int_or_auto": "an integer such as 4096 or 4k, or auto",
    "loads": "JSON",
    "parse_type": "a value of the listed kind",
}


def _strip_usage(message: str) -> str:
    message = " ".join(message.split())
    invalid = re.search(r"invalid (\w+) value", message)
    if invalid and invalid.group(1) in EXPECTED:
        message += f"; expected {EXPECTED[invalid.group(1)]}"
    return message


def _redact_argv(argv: list[str]) -> str:
    shown = []
    hide_next = False
    for word in argv:
        option = word.split("=", 1)[0]
        if hide_next:
            shown.append(REDACTED)
            hide_next = False
        elif option.startswith("--") and is_secret(option):
            if "=" in word:
                shown.append(f"{option}={REDACTED}")
            else:
                shown.append(word)
                hide_next = True
        else:
            shown.append(word)
    return " ".join(shlex.quote(w) for w in shown)


def reference() -> str:
    """docs/configuration.md's table of every vLLM flag as an env var (a test
    keeps the file equal to this)."""
    parser = new_parser()
    rows = ["| env var | vLLM flag | default |", "|---|---|---|"]
    aliases = {name: alias for alias, name in ALIASES.items()}
    for env, flag in sorted(flags(parser).items()):
        default = flag.action.default
        if default in (None, argparse.SUPPRESS):
            shown = ""
        else:
            shown = "`" + (repr(default) if default == "" else str(default)).replace("|", "\\|") + "`"
        alias = f" (or `{aliases[env]}`)" if env in aliases else ""
        rows.append(f"| `{env}`{alias} | `{flag.option}` | {shown} |")
    return "\n".join(rows)
