"""Errors on the wire: one set of handlers, and a shape per dialect.

Every dialect answers the same failures with the same statuses (the core's translation,
daemon/core/errors.py); a `Shape` says only how its dialect words them: the body, a status
it spells its own way (Anthropic's 529 for "overloaded"), and its names for engine inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from pydantic import ValidationError

from daemon.core.errors import to_api
from daemon.errors import EdgedError, InvalidRequest, error_body

log = logging.getLogger("edged.api")

Body = dict[str, Any]

# OpenAI's codes for HTTP-level failures the daemon's own classes do not raise.
_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


@dataclass(frozen=True)
class Failure:
    """A failure as every shape sees it: status, words, kind, field and code."""

    status: int
    message: str
    kind: str
    param: str | None = None
    code: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # Retry-After, WWW-Authenticate


def _openai_body(f: Failure) -> Body:
    return error_body(f.message, f.kind, f.param, f.code)


def _same_status(exc: EdgedError) -> int:
    return exc.status_code


def validation_items(extra: Any) -> list[tuple[str | None, str]]:
    """(field, message) pairs from Litestar's validation details."""
    items = extra if isinstance(extra, list) else []
    return [
        (str(i["key"]) if i.get("key") else None, str(i.get("message", "")))
        for i in items
        if isinstance(i, dict)
    ]


def first_field(extra: Any, detail: str) -> tuple[str, str | None]:
    """OpenAI's wording of a validation failure: the first top-level field and its message."""
    for key, message in validation_items(extra):
        if key:
            param = key.split(".")[0].split("[")[0]
            return (f"{param}: {message}" if message else detail), param
    return detail, None


def every_field(extra: Any, detail: str) -> tuple[str, str | None]:
    """Every problem as `field: message`, joined (Ollama's and llama-server's wording)."""
    parts = [f"{k}: {m}" if k else m for k, m in validation_items(extra)]
    return "; ".join(p for p in parts if p) or detail, None


@dataclass(frozen=True)
class Shape:
    """How one dialect words its errors."""

    body: Callable[[Failure], Body] = _openai_body
    status: Callable[[EdgedError], int] = _same_status
    # The dialect's names for engine inputs, where they differ (`prompt` is `messages`).
    params: Mapping[str, str] = field(default_factory=dict)
    validation: Callable[[Any, str], tuple[str, str | None]] = first_field

    def failure(self, exc: EdgedError) -> Failure:
        """`exc` (engine errors translated) as this dialect's failure."""
        exc = to_api(exc, self.params)
        return Failure(
            self.status(exc), exc.message, exc.error_type, exc.param, exc.code, exc.headers
        )

    def wire(self, exc: EdgedError) -> Body:
        """The body of `exc` (also the last event of a stream that failed)."""
        return self.body(self.failure(exc))

    def response(self, exc: EdgedError) -> Response[Body]:
        """`exc` as a whole response in this shape."""
        f = self.failure(exc)  # the translated error's headers: an engine error has none
        return Response(
            self.body(f),
            status_code=f.status,
            headers=dict(f.headers),
            media_type="application/json",
        )

    def invalid(self, exc: ValidationError) -> Response[Body]:
        """A body pydantic refused, read outside Litestar's own validation (a 400)."""
        extra = [
            {"key": ".".join(str(x) for x in e["loc"]), "message": e["msg"]} for e in exc.errors()
        ]
        return self._validation(extra, "invalid request body")

    def _validation(self, extra: Any, detail: str) -> Response[Body]:
        message, param = self.validation(extra, detail)
        text = message or "invalid request"
        f = Failure(400, text, "invalid_request_error", param, "invalid_value")
        return Response(self.body(f), status_code=400, media_type="application/json")

    def handlers(self) -> dict[type[Exception] | int, Any]:
        """Litestar exception handlers answering in this shape, most specific first."""

        def edged(_: Request[Any, Any, Any], exc: EdgedError) -> Response[Body]:
            return self.response(exc)

        def validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[Body]:
            return self._validation(exc.extra, exc.detail)

        def http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Body]:
            status = exc.status_code
            kind = "invalid_request_error" if status < 500 else "server_error"
            f = Failure(status, exc.detail, kind, None, _CODES.get(status))
            return Response(self.body(f), status_code=status, headers=exc.headers)

        def unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Body]:
            log.exception("unhandled error", exc_info=exc)
            f = Failure(500, "internal error", "server_error", None, "internal")
            return Response(self.body(f), status_code=500)

        return {
            EdgedError: edged,
            ValidationException: validation,
            HTTPException: http,
            Exception: unexpected,
        }


OPENAI = Shape()


def pydantic_error(exc: ValidationError, param: str | None = None) -> InvalidRequest:
    """A body built inside a handler that pydantic refused, as a 400 naming its fields."""
    parts = []
    for e in exc.errors()[:3]:
        loc = ".".join(str(x) for x in e["loc"])
        parts.append(f"{loc}: {e['msg']}" if loc else str(e["msg"]))
    return InvalidRequest("; ".join(parts) or "invalid request body", param=param)
