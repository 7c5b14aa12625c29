"""The tool-call and reasoning parsers, chosen from the model's chat template.

vLLM answers ``tool_choice`` other than ``none`` only with a tool-call parser
(``--tool-call-parser``), and splits reasoning from the answer only with a
reasoning parser (``--reasoning-parser``); which one fits depends on the
model. When the user names neither, the worker reads the chat template the
model will be served with and picks them:

- the tool-call parser from how the template writes a tool call: it renders a
  short conversation with one call (``get_weather(city="Paris")``) and matches
  the text against the syntaxes in ``TOOL_CALL_SYNTAXES``. A template whose
  rendering holds no trace of the tool renders no tools, and gets no parser;
- the reasoning parser from the template's own text (``REASONING_SYNTAXES``).

A parser is chosen only if vLLM's registry has it (read at run time);
tests/test_parsers.py fails, naming it, when vLLM renames or removes one.
With a tool-call parser, chosen or set, auto tool choice is on.
``TOOL_CALL_PARSER``, ``REASONING_PARSER`` and ``ENABLE_AUTO_TOOL_CHOICE`` set
by the user always win; ``none`` as a parser's name means no parser. A
template that matches no syntax, or cannot be read, leaves vLLM's defaults
(no parser). docs/tools.md has the table of syntaxes.
"""

from __future__ import annotations

import json
import logging
import re
from argparse import Namespace
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import vllm_internals as vi
from .config import extra_args
from .errors import ConfigError

logger = logging.getLogger(__name__)

NONE = "none"

# The conversation the chat template renders: one call of one tool, and its result.
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city now",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL: dict[str, Any] = {
    "id": "call00001",
    "type": "function",
    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
}
CHAT: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": CALL["id"], "name": "get_weather", "content": "sunny"},
]
# the call's arguments as JSON, however the template spaces them
ARGUMENTS = r'\{\s*"city"\s*:\s*"Paris"\s*\}'
HERMES = r'<tool_call>\s*\{\s*"name"\s*:\s*"get_weather"\s*,\s*"arguments"\s*:\s*' + ARGUMENTS + r"\s*\}\s*</tool_call>"
PYTHONIC = r"\[get_weather\(city=[\"']?Paris"
LLAMA_JSON = r'\{\s*"name"\s*:\s*"get_weather"\s*,\s*"parameters"\s*:\s*' + ARGUMENTS


@dataclass(frozen=True)
class Syntax:
    """A syntax one of vLLM's parsers reads: every pattern matches (and, when
    ``architectures`` is given, the model is one of them)."""

    parser: str  # the name in vLLM's registry
    family: str  # what the log calls it
    patterns: tuple[str, ...]
    architectures: tuple[str, ...] = ()

    def matches(self, text: str, architectures: Callable[[], list[str]]) -> bool:
        if not all(re.search(pattern, text, re.DOTALL) for pattern in self.patterns):
            return False
        return not self.architectures or bool(set(self.architectures) & set(architectures()))


# How a chat template writes the call, most specific first (the first match wins).
TOOL_CALL_SYNTAXES = (
    # harmony: vLLM treats only gpt-oss models as harmony, and the parser needs that
    Syntax(
        "openai",
        "gpt-oss (harmony)",
        (r"to=functions\.get_weather\b.*?<\|message\|>\s*" + ARGUMENTS,),
        ("GptOssForCausalLM",),
    ),
    Syntax("qwen3_coder", "Qwen3-Coder (XML)", (r"<tool_call>\s*<function=get_weather>\s*<parameter=city>\s*Paris",)),
    Syntax("granite4", "Granite 4", (r"<\|start_of_role\|>", HERMES)),
    Syntax("hermes", "Hermes / Qwen", (HERMES,)),
    Syntax("granite", "Granite 3", (r'(<\|tool_call\|>|<tool_call>)\s*\[\s*\{\s*"name"\s*:\s*"get_weather"',)),
    Syntax("granite-20b-fc", "Granite 20B function calling", (r'<function_call>\s*\{\s*"name"\s*:\s*"get_weather"',)),
    Syntax("mistral", "Mistral", (r'\[TOOL_CALLS\]\s*(\[\s*\{\s*"name"\s*:\s*"get_weather"|get_weather\s*\[ARGS\])',)),
    Syntax("deepseek_v31", "DeepSeek V3.1", (r"<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>\s*" + ARGUMENTS,)),
    Syntax(
        "deepseek_v3",
        "DeepSeek V3 / R1",
        (r"<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\s*```json\s*" + ARGUMENTS,),
    ),
    Syntax("llama4_pythonic", "Llama 4 (pythonic)", (r"<\|header_start\|>", PYTHONIC)),
    Syntax("llama4_json", "Llama 4 (JSON)", (r"<\|header_start\|>", LLAMA_JSON)),
    Syntax("pythonic", "Llama 3.2 (pythonic)", (PYTHONIC,)),
    Syntax("llama3_json", "Llama 3.x (JSON)", (LLAMA_JSON,)),
)
# How a chat template marks reasoning, read from the template itself.
REASONING_SYNTAXES = (
    Syntax("openai_gptoss", "gpt-oss (harmony)", (r"<\|channel\|>", r"analysis"), ("GptOssForCausalLM",)),
    Syntax("mistral", "Magistral", (r"\[THINK\]",)),
    Syntax("granite", "Granite 3.2", (r"(Here's|Here is) my thought process:",)),
    Syntax("deepseek_v3", "DeepSeek V3.1 (thinking on request)", (r"<｜Assistant｜>", r"</think>", r"\bthinking\b")),
    Syntax("deepseek_r1", "DeepSeek R1", (r"<｜Assistant｜>", r"</?think>")),
    Syntax("qwen3", "Qwen3 (<think> in ChatML)", (r"<\|im_start\|>", r"</?think>")),
)


def tool_call_parser(
    template: str, architectures: Callable[[], list[str]], registered: Iterable[str]
) -> tuple[str | None, str]:
    """The tool-call parser for ``template`` among those vLLM has (no I/O),
    and why."""
    rendered, error = render(template)
    if rendered is None:
        return None, f"the chat template did not render a tool call ({error})"
    if CALL["function"]["name"] not in rendered:
        return None, "the chat template renders no tools"
    syntax = first_match(TOOL_CALL_SYNTAXES, rendered, architectures, set(registered))
    if syntax is None:
        return None, "the chat template writes tool calls in no syntax a vLLM parser is known to read"
    return syntax.parser, f"the chat template writes tool calls as {syntax.family}"


def reasoning_parser(
    template: str, architectures: Callable[[], list[str]], registered: Iterable[str]
) -> tuple[str | None, str]:
    """The reasoning parser for ``template`` among those vLLM has (no I/O),
    and why."""
    syntax = first_match(REASONING_SYNTAXES, template, architectures, set(registered))
    if syntax is None:
        return None, "it marks no reasoning a vLLM parser is known to read"
    return syntax.parser, f"it marks reasoning as {syntax.family}"


def first_match(
    syntaxes: Iterable[Syntax], text: str, architectures: Callable[[], list[str]], registered: set[str]
) -> Syntax | None:
    for syntax in syntaxes:
        if syntax.matches(text, architectures):
            if syntax.parser in registered:
                return syntax
            logger.warning("vLLM %s has no parser named %s (for %s)", vi.vllm_version, syntax.parser, syntax.family)
    return None


def render(template: str) -> tuple[str | None, str | None]:
    """The template's rendering of ``CHAT`` with ``TOOL``, as transformers
    renders it for vLLM: tool-call arguments as a dict (vLLM parses them),
    else, for a template that wants them as text, as JSON text."""
    from transformers.utils.chat_template_utils import render_jinja_template

    error = None
    for arguments in (CALL["function"]["arguments"], json.dumps(CALL["function"]["arguments"])):
        call = {**CALL, "function": {**CALL["function"], "arguments": arguments}}
        chat = [CHAT[0], {**CHAT[1], "tool_calls": [call]}, CHAT[2]]
        try:
            rendered, _ = render_jinja_template(
                [chat], tools=[TOOL], chat_template=template, add_generation_prompt=True, bos_token="", eos_token=""
            )
            return rendered[0], None
        except Exception as failure:  # noqa: BLE001 - any template error: try the other form, then report it
            error = f"{type(failure).__name__}: {failure}"
    return None, error


# --- the template and the architecture the model is served with ---------------

TEMPLATE_FILE = "chat_template.jinja"  # transformers' own file for it
NAMED_TEMPLATE = "additional_chat_templates/tool_use.jinja"  # the one transformers picks when there are tools
TOKENIZER_CONFIG = "tokenizer_config.json"


def model_file(source: str, name: str, revision: str | None, token: str | None) -> str | None:
    """A file of a model or tokenizer (a local directory or a hub id), or None
    when it has no such file."""
    if Path(source).is_dir():
        path = Path(source) / name
        return path.read_text() if path.is_file() else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(source, name, revision=revision, token=token)).read_text()
    except RemoteEntryNotFoundError:  # not in the repo (a file missing offline is an error)
        return None


def served_template(args: Namespace) -> str | None:
    """The chat template vLLM renders a request with tools with: the given
    ``--chat-template``, else the tokenizer's (its ``tool_use`` template
    where it has named ones, as transformers picks it)."""
    if args.chat_template:
        return vi.load_chat_template(args.chat_template)
    source = args.tokenizer or args.model
    revision = args.tokenizer_revision or args.revision
    for name in (NAMED_TEMPLATE, TEMPLATE_FILE):
        text = model_file(source, name, revision, args.hf_token)
        if text is not None:
            return text
    config = model_file(source, TOKENIZER_CONFIG, revision, args.hf_token)
    template = json.loads(config).get("chat_template") if config else None
    if isinstance(template, list):  # named templates
        named = {item["name"]: item["template"] for item in template}
        template = named.get("tool_use", named.get("default"))
    return template if isinstance(template, str) else None


def read_architectures(args: Namespace) -> list[str]:
    """The model's architectures, from its config.json."""
    config = model_file(args.model, "config.json", args.revision, args.hf_token)
    return list(json.loads(config).get("architectures") or []) if config else []


# --- applied to vLLM's serve namespace ---------------------------------------


def user_sets(environ: Mapping[str, str], name: str) -> bool:
    """The user set the flag: its env var, or the option in VLLM_EXTRA_ARGS."""
    option = name.lower().replace("_", "-")
    words = extra_args(environ)
    return environ.get(name, "") != "" or any(
        word.split("=", 1)[0] in (f"--{option}", f"--no-{option}") for word in words
    )


def apply(args: Namespace, environ: Mapping[str, str]) -> list[str] | None:
    """Choose the parsers the user left unset, and set them in ``args``, with
    auto tool choice on when there is a tool-call parser (unless the user
    set it); ``none`` unsets a parser. Returns why, or None when the user
    set both parsers."""
    if (args.tool_call_parser or "").lower() == NONE:
        args.tool_call_parser = None
        if args.enable_auto_tool_choice:
            raise ConfigError(
                "ENABLE_AUTO_TOOL_CHOICE=true needs a tool-call parser, and TOOL_CALL_PARSER=none sets none"
            )
        tool_set = True
    else:
        tool_set = args.tool_call_parser is not None
    if (args.reasoning_parser or "").lower() == NONE:
        args.reasoning_parser = ""
        reasoning_set = True
    else:
        reasoning_set = bool(args.reasoning_parser)
    reasons = choose(args, tool_set, reasoning_set)
    if args.tool_call_parser and not user_sets(environ, "ENABLE_AUTO_TOOL_CHOICE"):
        args.enable_auto_tool_choice = True  # a tool-call parser, chosen or set, comes with it
    return reasons


def choose(args: Namespace, tool_set: bool, reasoning_set: bool) -> list[str] | None:
    """``apply``'s choice of the parsers not set, from the chat template."""
    if tool_set and reasoning_set:
        return None
    try:
        template = served_template(args)
    except Exception as error:  # noqa: BLE001 - no choice is vLLM's own default
        return [f"the chat template could not be read ({type(error).__name__}: {error})"]
    if not template:
        return ["the model has no chat template"]
    read: list[list[str]] = []

    def model_architectures() -> list[str]:  # read once, and only when a syntax asks
        if not read:
            try:
                read.append(read_architectures(args))
            except Exception:  # noqa: BLE001 - unknown: a syntax that needs it does not match
                read.append([])
        return read[0]

    reasons = []
    if tool_set:
        reasons.append("the tool-call parser as set")
    else:
        tool, why = tool_call_parser(template, model_architectures, vi.tool_parser_names())
        reasons.append(why)
        args.tool_call_parser = tool
    if reasoning_set:
        reasons.append("the reasoning parser as set")
    else:
        reasoning, why = reasoning_parser(template, model_architectures, vi.reasoning_parser_names())
        reasons.append(why)
        if reasoning:
            args.reasoning_parser = reasoning
    return reasons


def describe(reasons: list[str], args: Namespace) -> str:
    """The log line: what is in effect, and why."""
    tool = args.tool_call_parser or NONE
    auto = "on" if args.enable_auto_tool_choice else "off"
    reasoning = args.reasoning_parser or NONE
    why = "; ".join(reasons)
    return f"parsers: tool-call {tool} (auto tool choice {auto}), reasoning {reasoning}: {why}"
