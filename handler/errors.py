"""Errors the worker reports, in the shape vLLM's OpenAI server uses.

A failed job carries the JSON text of ``{"error": {"message", "type", "param",
"code"}}`` where ``code`` is the HTTP status ``vllm serve`` would have answered
with. The runpod SDK sets a job's error to ``str(item["error"])``, so the object
is yielded already serialized (see shared/runpod-protocol.md).
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any


class ConfigError(Exception):
    """A setting (environment variable) has a value the worker cannot use.
    Its message is one line naming the variable, the value and what is accepted."""


class JobError(Exception):
    """A job cannot be served; carries what the caller sees."""

    def __init__(
        self,
        message: str,
        status: int = HTTPStatus.BAD_REQUEST,
        param: str | None = None,
        type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = int(status)
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
