"""Job inputs for fuzzing, as hypothesis strategies: valid, half-valid (a valid
input with one thing broken), hostile (anything at all), integers beyond 64
bits in every integer field, and OpenAI routes spelled in other ways.

Used by tests/test_fuzz.py (a few hundred through the handler) and by
bench/soak.py (thousands through the local endpoint). Every input that can
run is short: ``max_tokens`` (and its OpenAI spellings) is always 1-4, a
mutation never removes it or sets it to null, and numbers that replace a
field are extremes or wrong types, never a large count that vLLM would
accept and spend minutes on (``n=5000``).
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import math
import types
import typing
from typing import Any

from hypothesis import strategies as st

from handler.jobs import location

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# fields that bound the work a job asks for
BOUNDS = frozenset({"max_tokens", "max_completion_tokens", "max_output_tokens"})
SHORT = st.integers(1, 4)

ODD_STRINGS = [
    "",
    " ",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\udbff\udc00\ud800",
    "\u202e\u2066evil",
    "😀" * 3,
    "\r\n\r\n",
    "data: [DONE]\n\n",
    "{{ bos_token }}{% for m in messages %}",
    "<|im_end|>",
    "</s>",
    "%s%n%x",
    "'; DROP TABLE jobs; --",
    "\\u0000",
    "null",
    "NaN",
    "[]",
    "user",
    "/v1/chat/completions",
    "é" * 50,
    "\ufeff",
    "x" * 5000,
]
odd_text = st.one_of(
    st.text(max_size=30),
    st.sampled_from(ODD_STRINGS),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=10),
)
huge_text = st.sampled_from(["x" * 100_000, "Paris " * 20_000, "😀" * 30_000])
odd_number = st.sampled_from(
    [
        0,
        -1,
        1,
        -(2**63),
        2**63,
        2**64 + 1,
        10**30,
        -(10**30),
        1e308,
        -1e308,
        1e-300,
        0.5,
        -0.5,
        math.nan,
        math.inf,
        -math.inf,
    ]
)
scalar = st.one_of(st.none(), st.booleans(), odd_number, odd_text)
json_value = st.recursive(
    scalar,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(odd_text, children, max_size=4),
    ),
    max_leaves=12,
)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = [value] if i % 2 else {"a": value}
    return value


rare = st.one_of(huge_text, st.builds(deep, st.integers(101, 400)))
hostile_value = st.one_of(scalar, json_value, scalar, json_value, rare)  # repeated: weighted

# -- valid inputs ---------------------------------------------------------------

text = st.sampled_from(
    [
        "What is the capital of France?",
        "Count to three.",
        "Hi",
        "Say yes or no.",
        "1, 2, 3,",
        "Écris une phrase.",
        "日本の首都は？",
        "😀?",
    ]
)
content_parts = st.lists(st.builds(lambda t: {"type": "text", "text": t}, text), min_size=1, max_size=2)
user = st.builds(lambda c: {"role": "user", "content": c}, st.one_of(text, content_parts))
system = st.builds(lambda c: {"role": "system", "content": c}, text)
assistant = st.builds(lambda c: {"role": "assistant", "content": c}, text)
# A question, the assistant's tool call and the tool's result (OpenAI's shape).
TOOL_CONVERSATION = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]
tool_turn = st.just(TOOL_CONVERSATION)
messages = st.one_of(
    st.builds(lambda s, u: [s, u], system, user),
    st.builds(lambda u: [u], user),
    st.builds(lambda u, a, v: [u, a, v], user, assistant, user),
    tool_turn,
)
sampling = st.fixed_dictionaries(
    {"max_tokens": SHORT},
    optional={
        "temperature": st.sampled_from([0, 0.0, 0.7, 1.0, 1.5]),
        "top_p": st.sampled_from([0.5, 0.9, 1.0]),
        "top_k": st.sampled_from([-1, 0, 1, 20]),
        "min_p": st.sampled_from([0.0, 0.1]),
        "seed": st.integers(0, 2**31),
        "stop": st.one_of(st.sampled_from([".", "\n"]), st.lists(st.sampled_from([".", ",", " is"]), max_size=3)),
        "presence_penalty": st.sampled_from([0.0, 0.5]),
        "repetition_penalty": st.sampled_from([1.0, 1.1]),
        "n": st.sampled_from([1, 2]),
        "logprobs": st.sampled_from([0, 1, 2]),
        "ignore_eos": st.booleans(),
        "skip_special_tokens": st.booleans(),
        "structured_outputs": st.just({"choice": ["yes", "no"]}),
        "temperature_null": st.none(),
    },
).map(lambda p: {("temperature" if k == "temperature_null" else k): v for k, v in p.items()})

native = st.one_of(
    st.fixed_dictionaries({"messages": messages, "sampling_params": sampling}, optional={"stream": st.booleans()}),
    st.fixed_dictionaries({"prompt": text, "sampling_params": sampling}, optional={"stream": st.booleans()}),
)
# vLLM's own request fields, as an OpenAI client sends them in extra_body
vllm_extras = {
    "top_k": st.sampled_from([-1, 5]),
    "stop": st.lists(st.sampled_from([".", "\n"]), max_size=2),
    "structured_outputs": st.just({"choice": ["yes", "no"]}),
    "repetition_penalty": st.just(1.1),
}
chat_body = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": messages, "max_tokens": SHORT},
    optional={
        "temperature": st.sampled_from([0, 1.0]),
        "stream": st.booleans(),
        "seed": st.integers(0, 99),
        "logprobs": st.booleans(),
        "n": st.sampled_from([1, 2]),
        "response_format": st.just({"type": "json_object"}),
        "tools": st.just(
            [
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                    },
                }
            ]
        ),
        **vllm_extras,
    },
)
completion_body = st.fixed_dictionaries(
    {"model": st.just(MODEL), "prompt": text, "max_tokens": SHORT},
    optional={
        "temperature": st.sampled_from([0, 1.0]),
        "stream": st.booleans(),
        "echo": st.booleans(),
        "logprobs": st.sampled_from([0, 2]),
        **vllm_extras,
    },
)
openai = st.one_of(
    st.builds(lambda b: {"openai_route": "/v1/chat/completions", "openai_input": b}, chat_body),
    st.builds(lambda b: {"openai_route": "/v1/completions", "openai_input": b}, completion_body),
    st.builds(lambda b: {"route": "/v1/completions", "body": b}, completion_body),
    st.just({"openai_route": "/v1/models"}),
    st.builds(lambda t: {"openai_route": "/tokenize", "openai_input": {"model": MODEL, "prompt": t}}, text),
)
valid = st.one_of(native, openai)

# -- half-valid: one thing broken ---------------------------------------------------


def _places(value: Any, path: tuple = ()) -> list[tuple]:
    """Every (path to a container, key in it) of a JSON tree."""
    places = []
    if isinstance(value, dict):
        for key, child in value.items():
            places.append((path, key))
            places += _places(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            places.append((path, index))
            places += _places(child, (*path, index))
    return places


def _at(value: Any, path: tuple) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def half_valid(draw: st.DrawFn, base: st.SearchStrategy = valid) -> Any:
    job = copy.deepcopy(draw(base))
    places = _places(job)
    path, key = draw(st.sampled_from(places))
    container = _at(job, path)
    bounded = key in BOUNDS
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "replace" or (action == "delete" and bounded):
        values = hostile_value.filter(lambda v: v is not None) if bounded else hostile_value
        container[key] = draw(values)
    elif action == "delete":
        del container[key]
    elif isinstance(container, dict):
        container[draw(odd_text)] = draw(hostile_value)
    else:
        container.append(draw(hostile_value))
    return job


# -- hostile: anything --------------------------------------------------------------

hostile = st.one_of(
    json_value,
    hostile_value,
    st.dictionaries(
        st.sampled_from(
            [
                "prompt",
                "messages",
                "sampling_params",
                "stream",
                "openai_route",
                "openai_input",
                "route",
                "body",
                "method",
                "input",
            ]
        )
        | odd_text,
        hostile_value,
        max_size=4,
    ),
    st.builds(
        lambda r, b: {"openai_route": r, "openai_input": b},
        odd_text
        | st.sampled_from(
            [
                "/v1/chat/completions",
                "/v1/completions",
                "/tokenize",
                "/detokenize",
                "/v1/responses",
                "/v1/messages",
                "/v1/embeddings",
                "v1/models",
                "/../../etc/passwd",
                "/health",
                "/metrics",
            ]
        ),
        hostile_value,
    ),
    st.builds(
        lambda m: {"messages": m, "sampling_params": {"max_tokens": 2}}, st.lists(hostile_value, min_size=1, max_size=3)
    ),
    st.builds(
        lambda p: {"prompt": "Hi", "sampling_params": p},
        st.dictionaries(
            st.sampled_from(
                sorted(
                    [
                        "temperature",
                        "n",
                        "stop",
                        "seed",
                        "logprobs",
                        "structured_outputs",
                        "extra_args",
                        "logit_bias",
                        "stop_token_ids",
                        "bad_words",
                        "top_k",
                        "min_tokens",
                        "repetition_detection",
                        "allowed_token_ids",
                    ]
                )
            ),
            hostile_value,
            min_size=1,
            max_size=3,
        ).map(lambda p: {**p, "max_tokens": 2}),
    ),
    st.builds(
        lambda m: {"messages": [m], "sampling_params": {"max_tokens": 2}},
        st.dictionaries(
            st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", "author"]),
            hostile_value,
            max_size=3,
        ),
    ),
)


# -- integers beyond 64 bits --------------------------------------------------------

# vLLM sends each request to its engine process as msgpack, which holds
# integers from -2**63 to 2**64 - 1; the worker refuses any integer beyond.
beyond_64_bits = st.one_of(st.integers(min_value=2**64), st.integers(max_value=-(2**63) - 1))


def holding(declared: Any, value: int) -> Any:
    """A value of the ``declared`` type whose integer is ``value`` (in a list or
    an object where the type says so), or None where the type holds none."""
    origin, args = typing.get_origin(declared), typing.get_args(declared)
    if declared is int:
        return value
    if origin is typing.Annotated:
        return holding(args[0], value)
    if origin in (typing.Union, types.UnionType):
        return next((held for arg in args if (held := holding(arg, value)) is not None), None)
    if origin in (list, set, tuple, collections.abc.Sequence, collections.abc.Iterable) and args:
        held = holding(args[0], value)
        return None if held is None else [held]
    if origin is dict and len(args) == 2:
        held = holding(args[1], value)
        return None if held is None else {"a": held}
    return None


@functools.cache
def integer_fields() -> dict[str, dict[str, Any]]:
    """The fields that hold integers, with their declared types, as vLLM
    declares them: ``SamplingParams``' (a native job's ``sampling_params``) and
    the chat and completions request models' (an OpenAI job's body)."""
    from handler import vllm_internals as vi
    from handler.native import settable_fields

    declared = {
        "native": {name: kind for name, kind in vi.sampling_param_types().items() if name in settable_fields()},
        "/v1/chat/completions": {name: f.annotation for name, f in vi.chat_request_model.model_fields.items()},
        "/v1/completions": {name: f.annotation for name, f in vi.completion_request_model.model_fields.items()},
    }
    return {
        kind: {name: t for name, t in fields.items() if holding(t, 0) is not None} for kind, fields in declared.items()
    }


@st.composite
def wide_integers(draw: st.DrawFn) -> tuple[Any, str]:
    """(job, param): a valid job with an integer beyond 64 bits in one integer
    field vLLM declares (native or OpenAI), or at any place of a valid job (a
    JSON schema's bound, a message, the route); ``param`` names that place,
    as the error must."""
    value = draw(beyond_64_bits)
    kind = draw(st.sampled_from(["native", "/v1/chat/completions", "/v1/completions", "anywhere"]))
    if kind == "anywhere":
        job = copy.deepcopy(draw(valid))
        path, key = draw(st.sampled_from(_places(job)))
        _at(job, path)[key] = value
        return job, location((*path, key))
    fields = integer_fields()[kind]
    name = draw(st.sampled_from(sorted(fields)))
    held = holding(fields[name], value)
    inner = "[0]" if isinstance(held, list) else ".a" if isinstance(held, dict) else ""
    if kind == "native":
        base = draw(native)
        base["sampling_params"] = {**base["sampling_params"], name: held}
        return base, f"sampling_params.{name}{inner}"
    body = draw(chat_body if kind == "/v1/chat/completions" else completion_body)
    return {"openai_route": kind, "openai_input": {**body, name: held}}, f"openai_input.{name}{inner}"


# -- route spellings -----------------------------------------------------------------

# Bodies the worker's check of vLLM's request model refuses: ``vllm serve``
# would answer each with a 500.
CHECKED = {
    "/v1/chat/completions": st.sampled_from(
        [{"structured_outputs": 0}, {"messages": None}, {"messages": [{"role": "user", "content": [{"type": "text"}]}]}]
    ),
    "/v1/completions": st.sampled_from([{"structured_outputs": 0}, {"structured_outputs": "json"}]),
}


def respell(route: str, how: str, where: int) -> str:
    if how == "query":
        return route + "?stream=true"
    if how == "empty query":
        return route + "?"
    if how == "fragment":
        return route + "#top"
    if how == "doubled slash":
        slashes = [i for i, c in enumerate(route) if c == "/"]
        at = slashes[where % len(slashes)]
        return route[:at] + "/" + route[at:]
    if how == "trailing slash":
        return route + "/"
    if how == "openai prefix":
        return "/openai" + route
    if how == "no leading slash":
        return route.lstrip("/")
    return f" {route}\n"  # surrounding whitespace


SPELLINGS = [
    "query",
    "empty query",
    "fragment",
    "doubled slash",
    "trailing slash",
    "openai prefix",
    "no leading slash",
    "whitespace",
]


@st.composite
def route_spellings(draw: st.DrawFn) -> tuple[Any, Any]:
    """(job, plain): an OpenAI job whose route is spelled another way (a query
    string, a fragment, doubled or trailing slashes, ...; one to three of
    them), often with a body the worker's check refuses, and the same job on
    the plain route."""
    route = draw(st.sampled_from(sorted(CHECKED)))
    body = draw(chat_body if route == "/v1/chat/completions" else completion_body)
    if draw(st.booleans()):
        body = {**body, **draw(CHECKED[route])}
    spelled = route
    for how in draw(st.lists(st.sampled_from(SPELLINGS), min_size=1, max_size=3)):
        spelled = respell(spelled, how, draw(st.integers(0, 5)))
    if draw(st.booleans()):
        return {"openai_route": spelled, "openai_input": body}, {"openai_route": route, "openai_input": body}
    return {"route": spelled, "body": body}, {"route": route, "body": body}


def bounded(job: Any) -> Any:
    """The job with a small output bound wherever one that could run has none
    (a native job without ``max_tokens`` would generate to the end of the
    context window)."""
    if not isinstance(job, dict):
        return job
    if "openai_route" in job or "route" in job:
        body = job.get("openai_input" if "openai_route" in job else "body")
        route = str(job.get("openai_route") or job.get("route") or "")
        if isinstance(body, dict) and all(body.get(key) is None for key in BOUNDS):
            body["max_output_tokens" if route.endswith("responses") else "max_tokens"] = 2
    elif "prompt" in job or "messages" in job:
        params = job.setdefault("sampling_params", {})
        if isinstance(params, dict) and params.get("max_tokens") is None:
            params["max_tokens"] = 2
    return job


job_inputs = st.one_of(
    valid,
    half_valid(),
    hostile,
    wide_integers().map(lambda case: case[0]),
    route_spellings().map(lambda case: case[0]),
).map(bounded)
