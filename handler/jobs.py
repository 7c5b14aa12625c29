"""Job inputs: what ``job["input"]`` may hold, as pydantic models.

Three shapes are accepted:

- native: ``{"prompt" | "messages", "sampling_params"?, "stream"?}``;
- OpenAI, as RunPod's ``/openai/v1`` sends it: ``{"openai_route", "openai_input"?}``;
- worker-vllm's route form: ``{"route", "body"?, "method"?}``.

Anything else is an error that names what is wrong; nothing is ignored. Every
input is also checked for what no part of the worker or vLLM could serve:
nesting deeper than ``MAX_JSON_DEPTH``, text that is not valid Unicode (a
lone surrogate, which JSON's ``\\ud800`` escape can carry) and integers beyond
64 bits (``INTEGERS``). A native job's ``messages`` and ``sampling_params``
values are then checked against vLLM's own types (native.py); an OpenAI job's
body is read with the request model of its route in vLLM's app
(``check_body``), so that a value vLLM's validation would crash on fails with
a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .errors import JobError
from .settings import Settings


class NativeJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="Text to complete as it is.")
    messages: list[Any] | None = Field(None, description="A chat; the model's chat template is applied.")
    sampling_params: dict[str, Any] = Field(default_factory=dict, description="Any field of vLLM's SamplingParams.")
    stream: StrictBool = Field(False, description="Yield text as it is generated.")
    model: str | None = Field(None, description="A served model or LoRA adapter (default: the served model).")
    tools: list[Any] | None = Field(None, description="Tools the model may call (a chat only), as in the chat API.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="The chat API's tool_choice (a chat only).")

    @model_validator(mode="after")
    def _one_prompt(self) -> NativeJob:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(
                'give exactly one of "prompt" (text) or "messages" (a chat), or "openai_route" for an OpenAI request'
            )
        if self.prompt is not None and (self.tools is not None or self.tool_choice is not None):
            raise ValueError('"tools" and "tool_choice" need "messages" (a chat), not "prompt"')
        return self

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class OpenAIJob(BaseModel):
    """What RunPod sends for a request to ``/openai/v1/...``; GETs such as
    ``/v1/models`` arrive without a body."""

    model_config = ConfigDict(extra="forbid")
    route_field: ClassVar[str] = "openai_route"
    body_field: ClassVar[str] = "openai_input"

    openai_route: str = Field(description="The OpenAI path, e.g. /v1/chat/completions.")
    openai_input: dict[str, Any] | None = Field(None, description="The request body.")

    def request(self) -> tuple[str, str, dict[str, Any] | None]:
        """(method, route, body) of the HTTP request this job stands for."""
        body = self.openai_input or None
        return ("POST" if body else "GET"), self.openai_route, body


class RouteJob(BaseModel):
    """worker-vllm's form of an OpenAI request."""

    model_config = ConfigDict(extra="forbid")
    route_field: ClassVar[str] = "route"
    body_field: ClassVar[str] = "body"

    route: str
    body: dict[str, Any] | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = None

    def request(self) -> tuple[str, str, dict[str, Any] | None]:
        """(method, route, body); without a method, a body means POST."""
        return self.method or ("POST" if self.body else "GET"), self.route, self.body


Job = NativeJob | OpenAIJob | RouteJob


MAX_DEPTH: int = Settings.model_fields["max_json_depth"].default
# The integers msgpack can hold: vLLM sends each request to its engine process
# as msgpack, and one beyond them fails there (a 500 with an empty message from
# vLLM 0.32 for ``top_k``, ``stream_interval``, a JSON schema's bound, ...).
# vLLM checks ``extra_args`` against the same range itself.
INTEGERS = range(-(2**63), 2**64)


def parse(job_input: Any, max_depth: int = MAX_DEPTH) -> Job:
    """The job input as a model, or a ``JobError`` that says what is wrong."""
    if not isinstance(job_input, dict):
        raise JobError(
            f"the job input must be a JSON object, not {json_type(job_input)}",
            param="input",
        )
    check_json(job_input, max_depth)
    if "openai_route" in job_input:
        model: type[BaseModel] = OpenAIJob
    elif "route" in job_input:
        model = RouteJob
    else:
        model = NativeJob
    try:
        job = model.model_validate(job_input)
    except ValidationError as error:
        raise JobError(readable(error, model), param=_first_field(error)) from None
    if isinstance(job, NativeJob):
        from . import native  # imports vLLM

        native.check(job)
    return job  # type: ignore[return-value]


def check_json(value: Any, max_depth: int, where: tuple[Any, ...] = ("input",), *, values: bool = True) -> None:
    """Refuse nesting deeper than ``max_depth`` arrays and objects and, with
    ``values``, text that cannot be encoded as UTF-8 (lone surrogates) and
    integers outside ``INTEGERS``, naming where. Iterative, so that no depth
    can exhaust Python's stack."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if not isinstance(item, (dict, list)):
            if values:
                _check_scalar(item, path)
            continue
        if len(path) - len(where) >= max_depth:
            shown = location(path[:8]) + ("..." if len(path) > 8 else "")
            raise JobError(
                f"{shown}: nested deeper than {max_depth} levels of arrays and objects (MAX_JSON_DEPTH)",
                param=location(path[1:8]) or None,
            )
        if isinstance(item, dict):
            for key, child in item.items():
                if values and isinstance(key, str):
                    _check_text(key, path, "a key of ")
                stack.append((child, (*path, key)))
        else:
            stack.extend((child, (*path, index)) for index, child in enumerate(item))


def _check_scalar(value: Any, path: tuple[Any, ...]) -> None:
    if isinstance(value, str):
        _check_text(value, path)
    elif isinstance(value, int) and value not in INTEGERS:
        raise JobError(
            f"{location(path)}: the integer is beyond 64 bits; vLLM takes integers from -2**63 to 2**64 - 1",
            param=location(path[1:]) or None,
        )


def _check_text(text: str, path: tuple[Any, ...], what: str = "") -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        char = text[error.start]
        raise JobError(
            f"{what}{location(path)}: the text holds a lone surrogate (\\u{ord(char):04x} at "
            f"character {error.start}), which is not valid Unicode",
            param=location(path[1:]) or None,
        ) from None


def location(parts: Iterable[Any]) -> str:
    """``input.messages[1].role``: names joined by dots, list indexes in
    brackets; a name that is not valid Unicode shows its escapes (``\\udda0``),
    so that the message itself can be sent as UTF-8."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            name = str(part).encode("utf-8", "backslashreplace").decode("utf-8")
            text += f".{name}" if text else name
    return text


def readable(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, each naming the field: ``input.stream: ...``."""
    problems = []
    for item in error.errors():
        where = location(("input", *item["loc"]))
        if item["type"] == "extra_forbidden" and model is not None:
            allowed = ", ".join(model.model_fields)
            problems.append(f"{where}: unknown field (this job shape takes {allowed})")
        else:
            message = item["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
    return "; ".join(problems)


def _first_field(error: ValidationError) -> str | None:
    for item in error.errors():
        if item["loc"]:
            return location(item["loc"])
    return None


# pydantic names the member of a union (``str``, ``list[str]``, a TypedDict's
# class name) in an error's location; these are not fields a user can see.
_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "bytes", "list", "dict", "none"})


def _is_field(part: Any) -> bool:
    if isinstance(part, int):
        return True
    text = str(part)
    return not (any(c in text for c in "[](){},") or text[:1].isupper() or text.lower() in _TYPE_NAMES)


def value_problems(errors: Iterable[Any], where: tuple[Any, ...], limit: int = 3) -> str:
    """pydantic's errors on one value (``ValidationError.errors()``) as
    ``where.field: what is wrong``, one clause per field, union members'
    complaints joined by "or"."""
    by_place: dict[str, list[str]] = {}
    for item in errors:
        place = location((*where, *(p for p in item["loc"] if _is_field(p))))
        message = item["msg"].removeprefix("Value error, ")
        said = by_place.setdefault(place, [])
        if message not in said:
            said.append(message)
    clauses = [
        f"{place}: {said[0]}" + "".join(f" or {m.removeprefix('Input ')}" for m in said[1:])
        for place, said in by_place.items()
    ]
    more = f" (and {len(clauses) - limit} more)" if len(clauses) > limit else ""
    return "; ".join(clauses[:limit]) + more


def json_type(value: Any) -> str:
    names = {
        list: "an array",
        dict: "an object",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
    }
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)


# The fields by which a value says which member of a union it means.
DISCRIMINATORS = frozenset({"role", "type", "author"})


def narrow(errors: list[Any], at: int = 0) -> list[Any]:
    """pydantic reports a value that fits no member of a union once for every
    member, each named at ``loc[at]``. Keep the errors of the member the value
    meant: the first whose discriminator (``role``, ``type``) it matched, else
    the one with the fewest complaints."""
    members: dict[Any, list[Any]] = {}
    for item in errors:
        loc = item["loc"]
        member = loc[at] if len(loc) > at and not _is_field(loc[at]) else None
        members.setdefault(member, []).append(item)
    if len(members) < 2:
        return errors
    meant = [
        items
        for items in members.values()
        if not any(len(i["loc"]) > at + 1 and i["loc"][at + 1] in DISCRIMINATORS for i in items)
    ]
    return meant[0] if meant else min(members.values(), key=len)


def materialize(value: Any, where: tuple[Any, ...]) -> None:
    """Read every lazily validated iterable in a validated value, as vLLM
    will: pydantic checks the items of an ``Iterable[...]`` field (a chat
    message's content parts) only then, and a bad one would fail inside vLLM."""
    if isinstance(value, Iterator):
        try:
            value = list(value)
        except ValidationError as error:
            problems = value_problems(narrow(error.errors(), at=1), where)
            raise JobError(problems, param=location(where[1:])) from None
    if isinstance(value, BaseModel):
        children: Iterable[tuple[Any, Any]] = vars(value).items()
    elif isinstance(value, dict):
        children = value.items()
    elif isinstance(value, (list, tuple)):
        children = enumerate(value)
    else:
        return
    for key, child in children:
        if isinstance(child, (BaseModel, dict, list, tuple, Iterator)):
            materialize(child, (*where, key))


def check_body(app: Any, method: str, template: str, body: Any, where: tuple[Any, ...]) -> None:
    """Read an OpenAI job's body with the request model vLLM's app declares for
    the route whose path is ``template`` (``routes.resolve`` finds it). What
    that validation reports, vLLM reports itself (its own 400); a value on
    which one of vLLM's validators crashes instead (``'int' object has no
    attribute 'get'``, a 500), or a content part it would fail on later, is a
    400 here that names it."""
    adapter = _body_adapter(app, method, template)
    if adapter is None or not isinstance(body, dict):
        return
    try:
        request = adapter.validate_python(_copy(body))
    except ValidationError:
        return
    except Exception as error:  # noqa: BLE001 - a validator that fails on a value
        raise _unreadable(adapter, body, error, where) from None
    materialize(request, where)


@cache
def _body_adapter(app: Any, method: str, template: str) -> TypeAdapter | None:
    for route in app.routes:
        field = getattr(route, "body_field", None)
        if field is not None and route.path == template and method in (route.methods or ()):
            try:
                return TypeAdapter(field.field_info.annotation)
            except Exception:  # noqa: BLE001 - a body type pydantic cannot take alone
                return None
    return None


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    """A copy vLLM's validators may edit in place (they normalize messages)."""
    copied = dict(body)
    if isinstance(copied.get("messages"), list):
        copied["messages"] = [dict(m) if isinstance(m, dict) else m for m in copied["messages"]]
    return copied


def _unreadable(adapter: TypeAdapter, body: dict[str, Any], error: Exception, where: tuple[Any, ...]) -> JobError:
    """The field whose value made vLLM's validation crash: the one without
    which it does not."""
    reason = f"{type(error).__name__}: {error}"
    for key, value in body.items():
        try:
            adapter.validate_python(_copy({k: v for k, v in body.items() if k != key}))
        except ValidationError:
            pass
        except Exception:  # noqa: BLE001 - still crashes: not this field
            continue
        place = (*where, key)
        return JobError(
            f"{location(place)}: vLLM cannot read {json_type(value)} here ({reason})",
            param=location(place[1:]),
        )
    return JobError(f"{location(where)}: vLLM cannot read this request ({reason})", param=location(where[1:]))
