"""Tool calling on the real engine: ENABLE_AUTO_TOOL_CHOICE, TOOL_CALL_PARSER=hermes
and CHAT_TEMPLATE=handler/smollm2_tool_chat_template.jinja (conftest's engine).

The 135M model does not call tools reliably by itself, so these tests force
its text with a ``structured_outputs`` regex that spells a Hermes tool call;
vLLM's ``hermes`` parser then reads that text into ``tool_calls``, as it would
a model's own."""

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


def chat(**extra) -> dict:
    body = {
        "model": MODEL,
        "messages": WEATHER,
        "tools": TOOLS,
        "temperature": 0,
        "max_tokens": 64,
        "structured_outputs": FORCED,
        **extra,
    }
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


async def test_an_openai_job_gets_a_parsed_tool_call(worker):
    [answer] = await run_job(worker, chat())
    [choice] = answer["choices"]
    assert choice["finish_reason"] == "tool_calls"
    assert not choice["message"]["content"]
    assert_weather_call(choice["message"]["tool_calls"])


async def test_a_streamed_openai_job_gets_the_tool_call_in_deltas(worker):
    items = await run_job(worker, chat(stream=True))
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
    assert choice["finish_reason"] == "tool_calls"
    assert_weather_call(choice["tool_calls"])


async def test_a_native_job_passes_tools_and_gets_tool_calls(worker):
    job = {
        "messages": WEATHER,
        "tools": TOOLS,
        "tool_choice": "auto",
        "sampling_params": {"temperature": 0, "max_tokens": 64, "structured_outputs": FORCED},
    }
    [output] = await run_job(worker, job)
    [choice] = output["choices"]
    assert choice["finish_reason"] == "tool_calls" and choice["tokens"] == [""]
    assert_weather_call(choice["tool_calls"])

    streamed = await run_job(worker, {**job, "stream": True})
    [choice] = native.merge(streamed)["choices"]  # a client joins the items as the worker joins a batch
    assert choice["finish_reason"] == "tool_calls"
    assert_weather_call(choice["tool_calls"])


async def test_a_request_with_tools_is_accepted_without_forcing(worker):
    """The model's own answer: a tool call or text, but no error."""
    [answer] = await run_job(worker, chat(structured_outputs=None, max_tokens=16))
    assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


async def test_tool_choice_none_answers_in_text(worker):
    [answer] = await run_job(worker, chat(tool_choice="none", structured_outputs=None, max_tokens=16))
    assert not answer["choices"][0]["message"].get("tool_calls")


async def test_tools_need_a_chat(worker):
    error = job_error(await run_job(worker, {"prompt": "Hi", "tools": TOOLS}))
    assert error["code"] == 400 and '"tools" and "tool_choice" need "messages"' in error["message"], error


async def test_bad_tools_are_vllms_400(worker):
    error = job_error(await run_job(worker, {"messages": WEATHER, "tools": [{"type": "function"}]}))
    assert error["code"] == 400 and "tools" in error["message"], error
