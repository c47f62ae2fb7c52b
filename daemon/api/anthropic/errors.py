"""Anthropic's error shape `{"type": "error", "error": {"type", "message"}}` and statuses."""

from __future__ import annotations

from typing import Any

from daemon.api.errors import Failure, Shape
from daemon.errors import EdgedError, Overloaded, Unavailable

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
    return OVERLOADED if isinstance(exc, (Overloaded, Unavailable)) else exc.status_code


SHAPE = Shape(body=lambda f: body(f.status, f.message), status=status_of)


def error_event(exc: EdgedError) -> tuple[str, dict[str, Any]]:
    """A failure in the middle of a stream, as Anthropic's `error` event."""
    return "error", SHAPE.wire(exc)


__all__ = ["SHAPE", "Failure", "body", "error_event", "status_of"]
