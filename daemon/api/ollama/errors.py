"""Ollama's error shape: `{"error": "message"}` with the status of the failure."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from pydantic import ValidationError

from daemon.api.errors import to_api
from daemon.errors import EdgedError

log = logging.getLogger("edged.api")


def body(exc: EdgedError) -> dict[str, Any]:
    """An edged error as Ollama words it (also the last line of a failed stream)."""
    return {"error": exc.message}


def edged_response(exc: EdgedError) -> Response[dict[str, Any]]:
    """An edged error as an Ollama error response."""
    exc = to_api(exc)
    return Response(
        body(exc), status_code=exc.status_code, headers=exc.headers, media_type="application/json"
    )


def _details(extra: Any) -> str:
    if isinstance(extra, list):
        parts = [
            f"{item.get('key')}: {item.get('message')}"
            for item in extra
            if isinstance(item, dict) and item.get("key")
        ]
        if parts:
            return "; ".join(parts)
    return "invalid request body"


def pydantic_message(exc: ValidationError) -> str:
    """The first few problems of a body, as `field: message`."""
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    return "; ".join(parts) or "invalid request body"


def _edged(_: Request[Any, Any, Any], exc: EdgedError) -> Response[dict[str, Any]]:
    return edged_response(exc)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    return Response({"error": _details(exc.extra)}, status_code=400)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    return Response({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", exc_info=exc)
    return Response({"error": "internal error"}, status_code=500)


def handlers() -> dict[type[Exception] | int, Any]:
    """Exception handlers of the Ollama routes."""
    return {
        EdgedError: _edged,
        ValidationException: _validation,
        HTTPException: _http,
        Exception: _unexpected,
    }
