"""Exception handlers: every failure leaves as the one error shape."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from daemon.errors import EdgedError, error_body

log = logging.getLogger("edged.api")

_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def _edged(_: Request[Any, Any, Any], exc: EdgedError) -> Response[dict[str, Any]]:
    return Response(exc.to_wire(), status_code=exc.status_code, headers=exc.headers)


def _param_of(extra: Any) -> tuple[str | None, str | None]:
    """The offending top-level field and its message from Litestar's validation details."""
    if isinstance(extra, list):
        for item in extra:
            if isinstance(item, dict) and item.get("key"):
                key = str(item["key"])
                return key.split(".")[0].split("[")[0], str(item.get("message", ""))
    return None, None


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[dict[str, Any]]:
    param, message = _param_of(exc.extra)
    text = f"{param}: {message}" if param and message else exc.detail
    return Response(
        error_body(text or "invalid request", "invalid_request_error", param, "invalid_value"),
        status_code=400,
    )


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    kind = "invalid_request_error" if status < 500 else "server_error"
    return Response(
        error_body(exc.detail, kind, None, _CODES.get(status)),
        status_code=status,
        headers=exc.headers,
    )


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", exc_info=exc)
    return Response(error_body("internal error", "server_error", None, "internal"), status_code=500)


def exception_handlers() -> dict[type[Exception] | int, Any]:
    """Handlers keyed by exception class, most specific first."""
    return {
        EdgedError: _edged,
        ValidationException: _validation,
        HTTPException: _http,
        Exception: _unexpected,
    }
