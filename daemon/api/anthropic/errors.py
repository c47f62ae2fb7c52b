"""Anthropic's error shape `{"type": "error", "error": {"type", "message"}}` and statuses."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from daemon.api.errors import _param_of, to_api
from daemon.errors import EdgedError, Overloaded, Unavailable

log = logging.getLogger("edged.api")

OVERLOADED = 529  # Anthropic's status for "try again later"

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    OVERLOADED: "overloaded_error",
}


def body(status: int, message: str) -> dict[str, Any]:
    """The error body for an HTTP status."""
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def status_of(exc: EdgedError) -> int:
    """A full queue or a daemon that is loading or draining is Anthropic's `overloaded`."""
    exc = to_api(exc)
    return OVERLOADED if isinstance(exc, (Overloaded, Unavailable)) else exc.status_code


def error_event(exc: EdgedError) -> tuple[str, dict[str, Any]]:
    """A failure in the middle of a stream, as Anthropic's `error` event."""
    exc = to_api(exc)
    return "error", body(status_of(exc), exc.message)


def _edged(_: Request[Any, Any, Any], exc: EdgedError) -> Response[dict[str, Any]]:
    exc = to_api(exc)
    status = status_of(exc)
    return Response(body(status, exc.message), status_code=status, headers=exc.headers)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    param, message = _param_of(exc.extra)
    text = f"{param}: {message}" if param and message else exc.detail
    return Response(body(400, text or "invalid request"), status_code=400)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    return Response(
        body(exc.status_code, exc.detail), status_code=exc.status_code, headers=exc.headers
    )


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", exc_info=exc)
    return Response(body(500, "internal error"), status_code=500)


def exception_handlers() -> dict[type[Exception] | int, Any]:
    """Handlers for the Anthropic routes, most specific first."""
    return {
        EdgedError: _edged,
        ValidationException: _validation,
        HTTPException: _http,
        Exception: _unexpected,
    }
