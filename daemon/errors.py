"""One error hierarchy for the whole daemon, and its one wire shape."""

from __future__ import annotations

from typing import Any


class EdgedError(Exception):
    """Base of every error edged reports to a client."""

    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_wire(self) -> dict[str, Any]:
        """The `{"error": {...}}` body every API dialect answers with."""
        return error_body(self.message, self.error_type, self.param, self.code)


class InvalidRequest(EdgedError):
    """A value the client sent is malformed or out of range (400)."""

    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """Prompt plus requested tokens do not fit the model's context (400)."""

    code = "context_length_exceeded"


class Unauthorized(EdgedError):
    """Missing or wrong API key (401)."""

    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(EdgedError):
    """A valid key without the scope the route needs (403)."""

    status_code = 403
    error_type = "permission_error"
    code = "insufficient_scope"


class ModelNotFound(EdgedError):
    """The requested model is neither a served file nor an alias (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(EdgedError):
    """A route or resource does not exist (404)."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Conflict(EdgedError):
    """The resource is busy, e.g. a request_id that is generating right now (409)."""

    status_code = 409
    error_type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(EdgedError):
    """The request body exceeds the configured limit (413)."""

    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(EdgedError):
    """The admission queue is full; retry later (429)."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Unavailable(EdgedError):
    """The daemon is loading or shutting down (503)."""

    status_code = 503
    error_type = "server_error"
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Timeout(EdgedError):
    """The request ran past the configured request timeout and was cancelled (504)."""

    status_code = 504
    error_type = "server_error"
    code = "timeout"


class ModelLoadError(EdgedError):
    """A model file exists but llama.cpp cannot load it (500-class, but not a crash)."""

    status_code = 503
    error_type = "server_error"
    code = "model_load_failed"


class EngineError(EdgedError):
    """llama.cpp failed while generating; the request is ended, the engine lives on."""

    status_code = 500
    error_type = "server_error"
    code = "engine_error"


def error_body(
    message: str, error_type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """Build the single wire shape `{"error": {message, type, param, code}}`."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}
