"""Agent frameworks against an OpenAI-compatible endpoint, as their users call them.

Runs in ``.venv-clients`` (tests/clients/requirements.txt), apart from the
worker's vLLM stack, and talks to the worker over HTTP only:

    .venv-clients/bin/python tests/clients/frameworks.py FRAMEWORK MODEL BASE_URL...

A BASE_URL is an OpenAI base URL (``.../v2/<id>/openai/v1`` or ``.../v1``).
Prints one JSON object per line for each call through each BASE_URL:
``{"base_url", "call", "ok", "value", "seconds"}``, where ``value`` describes what the
framework returned (types by name, so that tests/test_frameworks.py can check
them), or ``{"base_url", "call", "ok": false, "error", "trace"}``. A small model does not call a tool by itself, so each tool call
here is forced with the framework's own ``tool_choice``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

QUESTION = "What is the capital of France?"
WEATHER = "What is the weather in Paris?"
API_KEY = "local"  # the local endpoints take any key; RunPod's takes your RunPod API key
MAX_TOKENS = 48


class City(BaseModel):
    """A city and its country."""

    name: str
    country: str


def get_weather(city: str) -> str:
    """The weather in a city now."""
    return f"sunny in {city}"


def described(value: Any) -> Any:
    """A JSON-able description of what a framework returned."""
    if isinstance(value, BaseModel):
        return {"type": type(value).__name__, "fields": value.model_dump(mode="json")}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, "fields": described(dataclasses.asdict(value))}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(key): described(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [described(item) for item in value]
    return {"type": type(value).__name__, "repr": repr(value)[:500]}


# --- AutoGen -------------------------------------------------------------------------


def autogen(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    from autogen_agentchat.agents import AssistantAgent
    from autogen_core.models import ModelInfo, UserMessage
    from autogen_core.tools import FunctionTool
    from autogen_ext.models.openai import OpenAIChatCompletionClient

    info = ModelInfo(vision=False, function_calling=True, json_output=True, structured_output=True, family="unknown")

    def client(cls: type[OpenAIChatCompletionClient] = OpenAIChatCompletionClient) -> OpenAIChatCompletionClient:
        return cls(
            model=model, base_url=base_url, api_key=API_KEY, model_info=info, temperature=0, max_tokens=MAX_TOKENS
        )

    class ToolRequired(OpenAIChatCompletionClient):
        """AssistantAgent asks with tool_choice "auto"; this client makes a
        call required whenever tools are offered."""

        async def create(self, messages, *, tools=(), tool_choice="auto", **kwargs):  # type: ignore[no-untyped-def]
            return await super().create(
                messages, tools=tools, tool_choice="required" if tools else tool_choice, **kwargs
            )

    tool = FunctionTool(get_weather, description="The weather in a city now")

    async def plain() -> Any:
        result = await client().create([UserMessage(content=QUESTION, source="user")])
        return {"content": result.content, "finish_reason": result.finish_reason}

    async def forced_tool() -> Any:
        result = await client().create([UserMessage(content=WEATHER, source="user")], tools=[tool], tool_choice=tool)
        return {"content": described(result.content), "finish_reason": result.finish_reason}

    async def agent_tool() -> Any:
        agent = AssistantAgent("assistant", model_client=client(ToolRequired), tools=[tool])
        result = await agent.run(task=WEATHER)
        return [{"type": type(message).__name__, "content": described(message.content)} for message in result.messages]

    return {"plain": plain, "forced_tool": forced_tool, "agent_tool": agent_tool}


# --- LangChain -----------------------------------------------------------------------


def langchain(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=model, base_url=base_url, api_key=API_KEY, temperature=0, max_tokens=MAX_TOKENS)
    weather = tool(get_weather)

    async def invoke() -> Any:
        return (await llm.ainvoke(QUESTION)).content

    async def stream() -> Any:
        return [chunk.content async for chunk in llm.astream(QUESTION)]

    async def bind_tools() -> Any:
        message = await llm.bind_tools([weather], tool_choice="get_weather").ainvoke(WEATHER)
        return {"tool_calls": described(message.tool_calls), "content": message.content}

    async def structured_json_schema() -> Any:
        return described(await llm.with_structured_output(City, method="json_schema").ainvoke(QUESTION))

    async def structured_function_calling() -> Any:
        return described(await llm.with_structured_output(City, method="function_calling").ainvoke(QUESTION))

    return {
        "invoke": invoke,
        "stream": stream,
        "bind_tools": bind_tools,
        "structured_json_schema": structured_json_schema,
        "structured_function_calling": structured_function_calling,
    }


# --- instructor ----------------------------------------------------------------------


def instructor(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    import instructor as instructor_
    from openai import AsyncOpenAI

    def ask(mode: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            client = instructor_.from_openai(AsyncOpenAI(base_url=base_url, api_key=API_KEY), mode=mode)
            city = await client.chat.completions.create(
                model=model,
                response_model=City,
                messages=[{"role": "user", "content": QUESTION}],
                temperature=0,
                max_tokens=MAX_TOKENS,
                max_retries=0,
            )
            return described(city)

        return call

    return {"tools": ask(instructor_.Mode.TOOLS), "json_schema": ask(instructor_.Mode.JSON_SCHEMA)}


# --- openai-agents -------------------------------------------------------------------


def openai_agents(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    from agents import (
        Agent,
        ModelSettings,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        Runner,
        function_tool,
        set_tracing_disabled,
    )
    from openai import AsyncOpenAI

    set_tracing_disabled(True)  # traces would go to OpenAI's platform
    client = AsyncOpenAI(base_url=base_url, api_key=API_KEY)
    chat = OpenAIChatCompletionsModel(model=model, openai_client=client)
    responses = OpenAIResponsesModel(model=model, openai_client=client)
    settings = ModelSettings(temperature=0, max_tokens=MAX_TOKENS)
    weather = function_tool(get_weather)

    def plain(on: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            result = await Runner.run(Agent("assistant", model=on, model_settings=settings), QUESTION)
            return result.final_output

        return call

    def with_tool(on: Any) -> Callable[[], Awaitable[Any]]:
        async def call() -> Any:
            agent = Agent(
                "assistant",
                model=on,
                tools=[weather],
                model_settings=ModelSettings(temperature=0, max_tokens=MAX_TOKENS, tool_choice="get_weather"),
                tool_use_behavior="stop_on_first_tool",
            )
            result = await Runner.run(agent, WEATHER)
            calls = [item.raw_item for item in result.new_items if type(item).__name__ == "ToolCallItem"]
            return {"final_output": result.final_output, "calls": [described(call) for call in calls]}

        return call

    return {
        "chat_completions": plain(chat),
        "chat_completions_tool": with_tool(chat),
        "responses": plain(responses),
        "responses_tool": with_tool(responses),
    }


# --- pydantic-ai ---------------------------------------------------------------------


def pydantic_ai(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    chat = OpenAIChatModel(model, provider=OpenAIProvider(base_url=base_url, api_key=API_KEY))
    settings = {"temperature": 0, "max_tokens": MAX_TOKENS}

    async def text() -> Any:
        return (await Agent(chat, model_settings=settings).run(QUESTION)).output

    async def structured() -> Any:
        agent = Agent(chat, output_type=City, model_settings=settings)
        return described((await agent.run(QUESTION)).output)

    return {"text": text, "structured": structured}


# --- LiteLLM -------------------------------------------------------------------------


def litellm(base_url: str, model: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # else it fetches a price list at import
    import litellm as litellm_

    ask = {
        "model": f"openai/{model}",  # LiteLLM's prefix for any OpenAI-compatible server
        "api_base": base_url,
        "api_key": API_KEY,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }

    async def completion() -> Any:
        return (await litellm_.acompletion(**ask)).choices[0].message.content

    async def stream() -> Any:
        return [chunk.choices[0].delta.content or "" async for chunk in await litellm_.acompletion(**ask, stream=True)]

    return {"completion": completion, "stream": stream}


@dataclass(frozen=True)
class Framework:
    """One framework: the package the "Works with" table (docs/tools.md) names (its
    version is the pin in requirements.txt), the calls made here, each as the
    table lists it, and how a user points it at a RunPod endpoint."""

    name: str
    package: str
    calls: dict[str, str]
    snippet: str
    run: Callable[[str, str], dict[str, Callable[[], Awaitable[Any]]]]


FRAMEWORKS = {
    framework.run.__name__: framework
    for framework in (
        Framework(
            "AutoGen",
            "autogen-agentchat",
            {
                "plain": "`OpenAIChatCompletionClient.create`",
                "forced_tool": "a `FunctionTool` forced with `tool_choice`",
                "agent_tool": "an `AssistantAgent` calling a `FunctionTool`",
            },
            'OpenAIChatCompletionClient(model=MODEL, base_url=BASE_URL, api_key=KEY, model_info={..., "function_calling": True})',
            autogen,
        ),
        Framework(
            "LangChain",
            "langchain-openai",
            {
                "invoke": "`invoke`",
                "stream": "`stream`",
                "bind_tools": "`bind_tools(tool_choice=...)`",
                "structured_json_schema": '`with_structured_output` by `"json_schema"`',
                "structured_function_calling": '`with_structured_output` by `"function_calling"`',
            },
            "ChatOpenAI(model=MODEL, base_url=BASE_URL, api_key=KEY)",
            langchain,
        ),
        Framework(
            "instructor",
            "instructor",
            {
                "tools": "`response_model` in the default mode (`Mode.TOOLS`)",
                "json_schema": "`response_model` in `Mode.JSON_SCHEMA`",
            },
            "instructor.from_openai(OpenAI(base_url=BASE_URL, api_key=KEY))",
            instructor,
        ),
        Framework(
            "OpenAI Agents SDK",
            "openai-agents",
            {
                "chat_completions": "`OpenAIChatCompletionsModel`",
                "chat_completions_tool": "`OpenAIChatCompletionsModel` with a `function_tool`",
                "responses": "`OpenAIResponsesModel`",
                "responses_tool": "`OpenAIResponsesModel` with a `function_tool`",
            },
            "OpenAIChatCompletionsModel(model=MODEL, openai_client=AsyncOpenAI(base_url=BASE_URL, api_key=KEY))",
            openai_agents,
        ),
        Framework(
            "Pydantic AI",
            "pydantic-ai-slim",
            {"text": "a text answer", "structured": "a structured `output_type`"},
            "OpenAIChatModel(MODEL, provider=OpenAIProvider(base_url=BASE_URL, api_key=KEY))",
            pydantic_ai,
        ),
        Framework(
            "LiteLLM",
            "litellm",
            {"completion": "`completion`", "stream": "`completion(stream=True)`"},
            'litellm.completion(model="openai/" + MODEL, api_base=BASE_URL, api_key=KEY, ...)',
            litellm,
        ),
    )
}


async def main(framework: str, model: str, *base_urls: str) -> None:
    framework_ = FRAMEWORKS[framework]
    for base_url in base_urls:
        calls = framework_.run(base_url, model)
        assert list(calls) == list(framework_.calls), "each call the table lists, in its order"
        for call, run in calls.items():
            began = time.monotonic()
            try:
                line = {"call": call, "ok": True, "value": await asyncio.wait_for(run(), timeout=300)}
            except Exception as error:  # noqa: BLE001 - reported to the test, which fails with it
                line = {
                    "call": call,
                    "ok": False,
                    "error": f"{type(error).__name__}: {error}",
                    "trace": traceback.format_exc()[-3000:],
                }
            line["seconds"] = round(time.monotonic() - began, 2)
            print(json.dumps({"base_url": base_url, **line}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
