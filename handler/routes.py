"""The routes of vLLM's OpenAI app, as the worker offers them to jobs.

The list is read from the app itself, so it is always what this vLLM serves
for this model (embeddings and pooling routes appear only for models that
support them).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from starlette.routing import Match

from .errors import JobError

HIDDEN = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")


def normalize(route: str) -> str:
    """``v1/models`` and ``/v1/models`` are the same route; so is
    ``/openai/v1/models``, the path clients call on RunPod."""
    path = "/" + route.strip().lstrip("/")
    if path.startswith("/openai/"):
        path = path[len("/openai") :]
    return path


def served(app: Any) -> list[tuple[str, tuple[str, ...]]]:
    """(path, methods) of every route the app serves, documentation pages aside."""
    table = []
    for route in app.routes:
        methods = getattr(route, "methods", None)
        path = getattr(route, "path", None)
        if not methods or not path or path in HIDDEN:
            continue
        table.append((path, tuple(sorted(m for m in methods if m != "HEAD"))))
    return sorted(table)


def resolve(app: Any, method: str, route: str, field: str = "openai_route") -> tuple[str, str]:
    """(path, template): the path to call, and the path of the app's route
    that serves it as the app declares it (``/v1/responses/{response_id}``),
    by which the body is checked. A route is a path alone: a query string or
    fragment is refused, so that no spelling calls vLLM with what was not
    checked. An unknown route or method is an error that lists what this
    worker serves."""
    if "?" in route or "#" in route:
        raise JobError(
            f"input.{field}: a route is a path alone, without a query string or fragment "
            f"(request parameters go in the body): {route!r}",
            param=field,
        )
    path = normalize(route)
    scope = {"type": "http", "path": path, "method": method, "root_path": ""}
    allowed: set[str] = set()
    for candidate in app.routes:
        match, _ = candidate.matches(scope)
        if match == Match.FULL:
            return path, candidate.path
        if match == Match.PARTIAL:
            allowed |= set(getattr(candidate, "methods", ()) or ())
    if allowed:
        raise JobError(
            f"{path} does not take {method}; it takes {', '.join(sorted(allowed - {'HEAD'}))}",
            status=HTTPStatus.METHOD_NOT_ALLOWED,
            param=field,
        )
    listing = ", ".join(f"{' '.join(methods)} {p}" for p, methods in served(app))
    raise JobError(
        f"unknown route {route!r}; this worker serves: {listing}",
        status=HTTPStatus.NOT_FOUND,
        param=field,
    )
