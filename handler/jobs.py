"""Job inputs: what ``job["input"]`` may hold, as pydantic models.

Three shapes are accepted:

- native: ``{"prompt" | "messages", "sampling_params"?, "stream"?}``;
- OpenAI, as RunPod's ``/openai/v1`` sends it: ``{"openai_route", "openai_input"?}``;
- worker-vllm's route form: ``{"route", "body"?, "method"?}``.

Anything else is an error that names what is wrong; nothing is ignored.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .errors import JobError


class NativeJob(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str | None = Field(None, description="Text to complete as it is.")
    messages: list[dict[str, Any]] | None = Field(
        None, description="A chat; the model's chat template is applied."
    )
    sampling_params: dict[str, Any] = Field(
        default_factory=dict, description="Any field of vLLM's SamplingParams."
    )
    stream: StrictBool = Field(False, description="Yield text as it is generated.")

    @model_validator(mode="after")
    def _one_prompt(self) -> NativeJob:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(
                'give exactly one of "prompt" (text) or "messages" (a chat), '
                'or "openai_route" for an OpenAI request'
            )
        return self

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


class OpenAIJob(BaseModel):
    """What RunPod sends for a request to ``/openai/v1/...``; GETs such as
    ``/v1/models`` arrive without a body."""

    model_config = ConfigDict(extra="forbid")

    openai_route: str = Field(description="The OpenAI path, e.g. /v1/chat/completions.")
    openai_input: dict[str, Any] | None = Field(None, description="The request body.")

    def request(self) -> tuple[str, str, dict[str, Any] | None]:
        """(method, route, body) of the HTTP request this job stands for."""
        body = self.openai_input or None
        return ("POST" if body else "GET"), self.openai_route, body


class RouteJob(BaseModel):
    """worker-vllm's form of an OpenAI request."""

    model_config = ConfigDict(extra="forbid")

    route: str
    body: dict[str, Any] | None = None
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] | None = None

    def request(self) -> tuple[str, str, dict[str, Any] | None]:
        """(method, route, body); without a method, a body means POST."""
        return self.method or ("POST" if self.body else "GET"), self.route, self.body


Job = Union[NativeJob, OpenAIJob, RouteJob]


def parse(job_input: Any) -> Job:
    """The job input as a model, or a ``JobError`` that says what is wrong."""
    if not isinstance(job_input, dict):
        raise JobError(
            f"the job input must be a JSON object, not {_json_type(job_input)}",
            param="input",
        )
    if "openai_route" in job_input:
        model: type[BaseModel] = OpenAIJob
    elif "route" in job_input:
        model = RouteJob
    else:
        model = NativeJob
    try:
        return model.model_validate(job_input)  # type: ignore[return-value]
    except ValidationError as error:
        raise JobError(readable(error, model), param=_first_field(error)) from None


def readable(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """One line per problem, each naming the field: ``input.stream: ...``."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        where = f"input.{where}" if where else "input"
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
            return ".".join(str(part) for part in item["loc"])
    return None


def _json_type(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), type(value).__name__)
