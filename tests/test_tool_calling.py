"""Tool calling on the real engine, with the worker's defaults (conftest's
engine sets no tool variable): the embedded model's Hermes template
(handler/smollm2_tool_chat_template.jinja), the ``hermes`` parser chosen from
it, auto tool choice on, and TOOL_STRICT_LEVEL=parameter.

The 135M model does not call tools by itself, so these tests force a call:
with a named or ``required`` tool_choice, which vLLM holds to the function's
schema, or (for ``auto``) with a ``structured_outputs`` regex that spells a
Hermes tool call, which vLLM's ``hermes`` parser then reads into
``tool_calls`` as it would a model's own text."""

from __future__ import annotations

import json

import pytest
from conftest import CAPITAL, TOOL_TEMPLATE, job_error, run_job
from job_inputs import TOOL_CONVERSATION

from handler import native
from handler.settings import Settings

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
WEATHER = [{"role": "user", "content": "What is the weather in Paris?"}]
# the text of one Hermes tool call, as a regex (structured_outputs.regex)
FORCED = {"regex": r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris"\}\}\n</tool_call>'}
# a named tool_choice, as the OpenAI SDK sends one
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def chat(**extra) -> dict:
    body = {"model": MODEL, "messages": WEATHER, "tools": TOOLS, "temperature": 0, "max_tokens": 64, **extra}
    return {"openai_route": "/v1/chat/completions", "openai_input": body}


def assert_weather_call(tool_calls: list) -> None:
    [call] = tool_calls
    assert call["type"] == "function" and call["id"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


# -- the chat template (no engine) -----------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from handler import embedded_model

    model_dir = embedded_model.prepare(Settings.from_env().embedded_model_dir, progress=False)
    return AutoTokenizer.from_pretrained(str(model_dir))


CHATS = [
    CAPITAL,
    [{"role": "system", "content": "Be brief."}, *CAPITAL],
    [*CAPITAL, {"role": "assistant", "content": "Paris."}, {"role": "user", "content": "And of Italy?"}],
    [{"role": "system", "content": "Be brief."}, *CAPITAL, {"role": "assistant", "content": "Paris."}],
]


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_without_tools_the_template_renders_what_the_models_own_does(tokenizer, messages, add_generation_prompt):
    own = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    ours = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt, chat_template=TOOL_TEMPLATE.read_text()
    )
    assert ours == own


def test_the_template_renders_tools_calls_and_results_hermes_style(tokenizer):
    messages = TOOL_CONVERSATION
    assert messages[0] == WEATHER[0]
    text = tokenizer.apply_chat_template(
        messages, tools=TOOLS, tokenize=False, add_generation_prompt=True, chat_template=TOOL_TEMPLATE.read_text()
    )
    system, _ = text.split("<|im_end|>", 1)
    assert system.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert f"<tools>\n{json.dumps(TOOLS[0])}\n</tools>" in system
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
    ) in text
    assert "<|im_start|>user\n<tool_response>\nsunny, 21 C\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_streamed_tool_call_pieces_are_joined_by_index():
    def piece(index: int, **function) -> dict:
        call = {"index": index, "function": function}
        if "name" in function:
            call.update(id=f"call_{index}", type="function")
        return {"choices": [{"index": 0, "tokens": [], "finish_reason": None, "tool_calls": [call]}], "usage": None}

    merged = native.merge(
        [
            piece(0, name="get_weather", arguments=""),
            piece(0, arguments='{"city": '),
            piece(1, name="get_time", arguments="{}"),
            piece(0, arguments='"Paris"}'),
        ]
    )
    assert merged["choices"][0]["tool_calls"] == [
        {
            "index": 0,
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"index": 1, "id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]


# -- on the engine ---------------------------------------------------------------------


def streamed_choice(items: list) -> dict:
    """The choice a client puts together from a streamed OpenAI job's deltas."""
    events = [
        json.loads(line[len("data: ") :]) for item in items for line in item.split("\n\n") if line.startswith("data: {")
    ]
    deltas = [
        {
            "choices": [
                {
                    "index": 0,
                    "tokens": [],
                    "finish_reason": c["finish_reason"],
                    "tool_calls": c["delta"].get("tool_calls"),
                }
            ],
            "usage": None,
        }
        for event in events
        for c in event["choices"]
    ]
    [choice] = native.merge(deltas)["choices"]
    return choice


async def test_a_named_tool_choice_gets_a_call_that_fits_the_functions_schema(worker):
    """vLLM 0.32 held a named choice only to the Hermes envelope; the worker's
    TOOL_STRICT_LEVEL=parameter holds the arguments to the schema too
    (without it they came back as the schema itself: {"city": {"type": ...}})."""
    [answer] = await run_job(worker, chat(tool_choice=NAMED))
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "stop"  # OpenAI's for a named choice
    assert not choice["message"]["content"]
    assert_weather_call(choice["message"]["tool_calls"])

    choice = streamed_choice(await run_job(worker, chat(tool_choice=NAMED, stream=True)))
    assert_weather_call(choice["tool_calls"])


async def test_a_required_tool_choice_gets_a_call_that_fits_the_functions_schema(worker):
    [answer] = await run_job(worker, chat(tool_choice="required"))
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert_weather_call(choice["message"]["tool_calls"])

    choice = streamed_choice(await run_job(worker, chat(tool_choice="required", stream=True)))
    assert choice["finish_reason"] == "tool_calls"
    assert_weather_call(choice["tool_calls"])


async def test_auto_tool_choice_parses_the_models_own_text(worker):
    for stream in (False, True):
        items = await run_job(worker, chat(structured_outputs=FORCED, stream=stream))
        choice = streamed_choice(items) if stream else items[0]["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert_weather_call(choice["tool_calls"] if stream else choice["message"]["tool_calls"])


async def test_a_native_job_passes_tools_and_gets_tool_calls(worker):
    job = {
        "messages": WEATHER,
        "tools": TOOLS,
        "tool_choice": "required",
        "sampling_params": {"temperature": 0, "max_tokens": 64},
    }
    [output] = await run_job(worker, job)
    [choice] = output["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["tokens"] == [""]
    assert_weather_call(choice["tool_calls"])

    streamed = await run_job(worker, {**job, "tool_choice": NAMED, "stream": True})
    [choice] = native.merge(streamed)["choices"]  # a client joins the items as the worker joins a batch
    assert_weather_call(choice["tool_calls"])


async def test_a_request_with_tools_is_accepted_without_forcing(worker):
    """The model's own answer: a tool call or text, but no error."""
    [answer] = await run_job(worker, chat(max_tokens=16))
    assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


async def test_tool_choice_none_answers_in_text(worker):
    [answer] = await run_job(worker, chat(tool_choice="none", max_tokens=16))
    assert not answer["choices"][0]["message"].get("tool_calls")


async def test_tools_need_a_chat(worker):
    error = job_error(await run_job(worker, {"prompt": "Hi", "tools": TOOLS}))
    assert error["code"] == 400 and '"tools" and "tool_choice" need "messages"' in error["message"], error


async def test_bad_tools_are_vllms_400(worker):
    error = job_error(await run_job(worker, {"messages": WEATHER, "tools": [{"type": "function"}]}))
    assert error["code"] == 400 and "tools" in error["message"], error
