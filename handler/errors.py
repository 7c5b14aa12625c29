"""Errors the worker reports, in the shape vLLM's OpenAI server uses.

A failed job carries the JSON text of ``{"error": {"message", "type", "param",
"code"}}`` where ``code`` is the HTTP status ``vllm serve`` would have answered
with. The runpod SDK sets a job's error to ``str(item["error"])``, so the object
is yielded already serialized (see shared/runpod-protocol.md).

The local endpoint's and the playground proxy's routes refuse a request by
raising ``HTTPError``; one exception handler (``answer_http_error``) turns it
into the JSON response. Load-balancing mode's front, plain ASGI, answers one
with ``load_balancing.refuse``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse


class ConfigError(Exception):
    """A setting (environment variable) has a value the worker cannot use.
    Its message is one line naming the variable, the value and what is accepted."""


class HTTPError(Exception):
    """A request refused: its HTTP status, a message naming what is wrong, and
    any headers the answer carries (``Retry-After``). Answered as
    ``{"error": message}``, RunPod's shape; subclasses give their own ``body``."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.headers = dict(headers) if headers else None

    def body(self) -> Any:
        return {"error": self.message}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


async def answer_http_error(request: Request, error: Exception) -> JSONResponse:
    """The Starlette exception handler for ``HTTPError`` (and so ``JobError``)."""
    assert isinstance(error, HTTPError)
    return error.response()


class JobError(HTTPError):
    """A job cannot be served; carries what the caller sees, in vLLM's shape."""

    def __init__(
        self,
        message: str,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(status, message)
        self.param = param
        self.type = type or _error_type(self.status)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.status,
            }
        }

    def to_json(self) -> str:
        return json.dumps(self.body())

    @classmethod
    def from_response(cls, status: int, payload: bytes) -> JobError:
        """The error a non-2xx answer of vLLM's app stands for, keeping vLLM's
        own error object where the body is one."""
        text = payload.decode("utf-8", "replace")
        try:
            body = json.loads(text)
        except ValueError:
            return cls(text.strip() or HTTPStatus(status).phrase, status)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict) and "message" in error:
            return cls(
                str(error["message"]),
                status,
                param=error.get("param"),
                type=error.get("type"),
            )
        if isinstance(error, str):
            return cls(error, status)
        detail = body.get("detail") if isinstance(body, dict) else None
        return cls(_detail_message(detail) if detail is not None else text, status)


def _error_type(status: int) -> str:
    """vLLM's naming: ``BadRequestError``, ``NotFoundError``, ..."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    name = "".join(word.capitalize() for word in phrase.replace("-", " ").split())
    return name if name.endswith("Error") else name + "Error"


def _detail_message(detail: Any) -> str:
    """FastAPI's own validation errors (``{"detail": [...]}``) made readable."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                where = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)
