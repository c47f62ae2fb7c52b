"""Exception handlers: every failure leaves as the one error shape."""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from daemon.engine import errors as engine
from daemon.errors import (
    Conflict,
    ContextLengthExceeded,
    EdgedError,
    EngineError,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    Overloaded,
    Unavailable,
    error_body,
)

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


# What a dialect calls an engine input, where its name differs from the engine's own.
_FIELDS: dict[str, dict[str, str]] = {
    "/chat/completions": {"prompt": "messages"},
    "/api/generate": {"max_tokens": "generation_config.max_new_tokens"},
    "/api/generate-batch": {"max_tokens": "generation_config.max_new_tokens"},
}


def to_api(exc: EdgedError, path: str = "") -> EdgedError:
    """The engine's error as the API error (status, type, field) the dialect at `path`
    reports; any other error as it is."""
    if not isinstance(exc, engine.EngineError):
        return exc
    names = next((f for suffix, f in _FIELDS.items() if path.endswith(suffix)), {})
    param = names.get(exc.subject, exc.subject) if exc.subject else None
    retry = exc.retry_after or 1
    msg = exc.message
    if isinstance(exc, engine.ContextOverflow):
        return ContextLengthExceeded(msg, param=param)
    if isinstance(exc, engine.WrongModelKind):
        return InvalidRequest(msg, param=param, code="model_not_supported")
    if isinstance(exc, engine.InvalidInput):
        return InvalidRequest(msg, param=param)
    if isinstance(exc, engine.UnknownModel):
        return ModelNotFound(msg, param=param)
    if isinstance(exc, engine.ModelUnavailable):
        return Unavailable(msg, retry_after=retry)
    if isinstance(exc, engine.LoadFailed):
        return ModelLoadError(msg)
    if isinstance(exc, engine.QueueFull):
        return Overloaded(msg, retry_after=retry)
    if isinstance(exc, engine.IdBusy):
        return Conflict(msg, param=param)
    return EngineError(msg)


def _edged(request: Request[Any, Any, Any], exc: EdgedError) -> Response[dict[str, Any]]:
    exc = to_api(exc, request.url.path)
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
