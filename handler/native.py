"""Native jobs as requests to vLLM's OpenAI app, and its answers in
worker-vllm's output shape.

A ``prompt`` job becomes a ``/v1/completions`` request and a ``messages`` job a
``/v1/chat/completions`` request, so templating, validation and generation
happen in one place for both job kinds. The output keeps worker-vllm's shape:
``{"choices": [{"tokens": [...], "finish_reason"}], "usage": {"input", "output"}}``.

Before that, ``messages`` and ``sampling_params`` values are checked against
the types vLLM declares (its chat message type, the annotations of its
``SamplingParams``), read at run time, so a bad value fails with a 400 that
names it instead of reaching vLLM's code.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Iterable
from functools import cache
from typing import TYPE_CHECKING, Any

from pydantic import TypeAdapter, ValidationError

from . import vllm_internals as vi
from .errors import JobError
from .jobs import json_type, location, materialize, narrow, value_problems
from .streaming import event_data

if TYPE_CHECKING:
    from .jobs import NativeJob

COMPLETIONS = "/v1/completions"
CHAT = "/v1/chat/completions"
# SamplingParams fields the OpenAI request models spell differently.
RENAMED = {"extra_args": "vllm_xargs"}


@cache
def settable_fields() -> frozenset[str]:
    """SamplingParams fields that both OpenAI request models accept."""
    both = vi.request_fields(vi.completion_request_model) & vi.request_fields(vi.chat_request_model)
    return frozenset(name for name in vi.sampling_param_fields() if RENAMED.get(name, name) in both)


def check(job: NativeJob) -> None:
    """Raise a ``JobError`` naming the first bad message or sampling parameter."""
    if job.messages is not None:
        check_messages(job.messages)
    check_sampling_params(job.sampling_params)


@cache
def _message_adapter() -> TypeAdapter:
    return TypeAdapter(vi.ChatMessage)


def check_messages(messages: list[Any]) -> None:
    """Each message must be one vLLM's chat API accepts, content parts included."""
    if not messages:
        raise JobError("input.messages: the chat is empty; give at least one message", param="messages")
    adapter = _message_adapter()
    for index, message in enumerate(messages):
        where = ("input", "messages", index)
        try:
            validated = adapter.validate_python(message)
        except ValidationError as error:
            raise _message_error(where, message, error) from None
        except (vi.ClientError, ValueError, TypeError) as error:
            raise JobError(f"{location(where)}: {error}", param=location(where[1:])) from None
        materialize(validated, where)


ROLES = '"system", "user", "assistant", "tool", ...'


def _message_error(where: tuple[Any, ...], message: Any, error: ValidationError) -> JobError:
    """The reason a message fits none of the message types, from the type its
    role asks for (vLLM's union reports every member's complaints)."""
    param = location(where[1:])
    if not isinstance(message, dict):
        return JobError(
            f'{location(where)}: a message is an object such as {{"role": "user", "content": "Hi"}}, '
            f"not {json_type(message)}",
            param=param,
        )
    if "role" in message and not isinstance(message["role"], str):
        return JobError(
            f"{location(where)}.role: the role is a string ({ROLES}), not {json_type(message['role'])}",
            param=f"{param}.role",
        )
    if "role" not in message and "author" not in message:
        return JobError(f"{location(where)}.role: missing; every message has a role ({ROLES})", param=f"{param}.role")
    # the member that takes this role: OpenAI's type for it, else vLLM's any-role type
    items = narrow(error.errors())
    field = next((part for item in items for part in item["loc"][1:2]), None)
    return JobError(value_problems(items, where), param=location((*where[1:], field) if field else where[1:]))


@cache
def _value_adapter(name: str) -> TypeAdapter | None:
    """A validator for the type ``SamplingParams`` declares for ``name``
    (None where pydantic cannot build one: vLLM then checks the value)."""
    declared = vi.sampling_param_types().get(name)
    if declared is None:
        return None
    try:
        return TypeAdapter(declared)
    except Exception:  # noqa: BLE001 - an exotic type: left to vLLM
        return None


def check_sampling_value(name: str, value: Any) -> None:
    """``value`` must fit the type ``SamplingParams`` declares for ``name``;
    null stands for vLLM's default."""
    adapter = _value_adapter(name)
    if value is None or adapter is None:
        return
    where = ("input", "sampling_params", name)
    param = location(where[1:])
    try:
        adapter.validate_python(value)
    except ValidationError as error:
        raise JobError(value_problems(error.errors(), where), param=param) from None
    except (vi.ClientError, ValueError, TypeError) as error:  # a vLLM type's own check
        raise JobError(f"{location(where)}: {error}", param=param) from None


def check_sampling_params(params: dict[str, Any]) -> None:
    """Unknown names and values of the wrong type are errors."""
    known = set(vi.sampling_param_fields())
    settable = settable_fields()
    for name, value in params.items():
        if name not in known:
            raise JobError(
                f"sampling_params.{name} is not a field of vLLM's SamplingParams "
                f"(it has: {', '.join(sorted(settable))})",
                param=f"sampling_params.{name}",
            )
        if name not in settable:
            raise JobError(
                f"sampling_params.{name} is internal to vLLM and cannot be set per request",
                param=f"sampling_params.{name}",
            )
        check_sampling_value(name, value)


def to_request(job: NativeJob, model: str) -> tuple[str, dict[str, Any]]:
    """The route and body of the OpenAI request that serves a native job
    (checked by ``check`` when it was parsed)."""
    fields = {RENAMED.get(name, name): value for name, value in job.sampling_params.items()}
    body: dict[str, Any] = {"model": job.model or model, **fields}
    # A missing max_tokens means the rest of the context window. The chat API
    # does that for null; the completions API turns null into 16, so for a
    # prompt job the worker fills it in (see ``rest_of_context``).
    max_tokens = body.pop("max_tokens", None)
    if job.is_chat:
        route = CHAT
        body["messages"] = job.messages
        for name in ("tools", "tool_choice"):
            if getattr(job, name) is not None:
                body[name] = getattr(job, name)
        body["max_completion_tokens"] = max_tokens
        logprobs = body.get("logprobs")
        if isinstance(logprobs, int) and not isinstance(logprobs, bool):
            # SamplingParams counts logprobs; the chat API splits that in two.
            body["logprobs"] = True
            body["top_logprobs"] = logprobs
    else:
        route = COMPLETIONS
        body["prompt"] = job.prompt
        body["max_tokens"] = max_tokens
    if job.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return route, body


def needs_context_budget(route: str, body: dict[str, Any]) -> bool:
    return route == COMPLETIONS and body.get("max_tokens") is None


def tokenize_request(body: dict[str, Any]) -> dict[str, Any]:
    """The /tokenize request that counts a completion prompt's tokens."""
    return {field: body[field] for field in vi.TOKENIZE_REQUEST_FIELDS}


def rest_of_context(tokenized: dict[str, Any]) -> int:
    """max_tokens for a prompt: what the context window has left (at least 1,
    so that a prompt that fills it gets vLLM's own context-length error)."""
    return max(1, int(tokenized[vi.TOKENIZE_MAX_MODEL_LEN]) - int(tokenized[vi.TOKENIZE_COUNT]))


def _usage(usage: dict[str, Any] | None) -> dict[str, int]:
    usage = usage or {}
    return {"input": usage.get("prompt_tokens") or 0, "output": usage.get("completion_tokens") or 0}


def _text(choice: dict[str, Any]) -> str:
    if "text" in choice:
        return choice.get("text") or ""
    part = choice.get("delta") or choice.get("message") or {}
    return part.get("content") or ""


def _choice(choice: dict[str, Any], tokens: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": choice.get("index", 0),
        "tokens": tokens,
        "finish_reason": choice.get("finish_reason"),
    }
    if choice.get("logprobs") is not None:
        out["logprobs"] = choice["logprobs"]
    message = choice.get("message") or choice.get("delta") or {}
    for key in ("reasoning_content", "reasoning", "tool_calls"):
        if message.get(key):
            out[key] = message[key]
    return out


def from_response(data: dict[str, Any]) -> dict[str, Any]:
    """A whole completion or chat completion in the native shape."""
    choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
    return {
        "choices": [_choice(c, [_text(c)]) for c in choices],
        "usage": _usage(data.get("usage")),
    }


async def stream_deltas(events: AsyncIterable[str]) -> AsyncIterator[dict[str, Any]]:
    """OpenAI stream events as native deltas (one per event with news)."""
    async for event in events:
        data = event_data(event)
        if not isinstance(data, dict):
            continue
        if "error" in data:
            error = data["error"]
            if isinstance(error, dict):
                raise JobError(
                    str(error.get("message")),
                    status=int(error.get("code") or 500),
                    param=error.get("param"),
                    type=error.get("type"),
                )
            raise JobError(str(error), status=500)
        choices = [_choice(c, [_text(c)]) for c in data.get("choices") or []]
        if choices and not any(_has_news(c) for c in choices):
            continue  # the opening role-only chunk of a chat stream
        yield {
            "choices": choices,
            "usage": _usage(data.get("usage")) if data.get("usage") else None,
        }


def _has_news(choice: dict[str, Any]) -> bool:
    return any(choice["tokens"]) or any(
        value is not None for key, value in choice.items() if key not in ("index", "tokens")
    )


def merge(deltas: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several native deltas as one streamed item: pieces of text per choice,
    tool calls joined by their index, the latest finish reason and usage."""
    by_index: dict[int, dict[str, Any]] = {}
    usage = None
    for delta in deltas:
        usage = delta["usage"] or usage
        for choice in delta["choices"]:
            merged = by_index.setdefault(
                choice["index"], {"index": choice["index"], "tokens": [], "finish_reason": None}
            )
            merged["tokens"] += [t for t in choice["tokens"] if t]
            for key, value in choice.items():
                if key not in ("index", "tokens") and value is not None:
                    if key == "logprobs" and "logprobs" in merged:
                        merged[key] = _join_logprobs(merged[key], value)
                    elif key == "tool_calls" and "tool_calls" in merged:
                        merged[key] = _join_tool_calls(merged[key], value)
                    else:
                        merged[key] = value
    return {
        "choices": [by_index[i] for i in sorted(by_index)],
        "usage": usage or {"input": 0, "output": 0},
    }


def _join_logprobs(first: Any, second: Any) -> Any:
    if isinstance(first, dict) and isinstance(second, dict):
        joined = dict(first)
        for key, value in second.items():
            if isinstance(value, list) and isinstance(first.get(key), list):
                joined[key] = first[key] + value
            else:
                joined[key] = value
        return joined
    return second


def _join_tool_calls(first: list[Any], second: list[Any]) -> list[Any]:
    """Streamed tool-call pieces joined by their ``index``: the first piece of
    a call brings its id and name, later ones more of its arguments' text."""
    joined = [dict(call, function=dict(call.get("function") or {})) for call in first]
    by_index = {call.get("index"): call for call in joined}
    for piece in second:
        call = by_index.get(piece.get("index"))
        if call is None:
            call = dict(piece, function=dict(piece.get("function") or {}))
            by_index[piece.get("index")] = call
            joined.append(call)
            continue
        for key, value in piece.items():
            if key != "function" and value is not None:
                call[key] = value
        for key, value in (piece.get("function") or {}).items():
            if key == "arguments" and value:
                call["function"]["arguments"] = (call["function"].get("arguments") or "") + value
            elif value is not None:
                call["function"][key] = value
    return joined
