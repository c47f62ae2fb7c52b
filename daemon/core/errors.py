"""The engine's errors as edged's API errors: one translation, at the core's boundary.

Which status and kind an engine failure is does not depend on the dialect; how it is worded
on the wire does (daemon/api/errors.py, one shape per dialect).
"""

from __future__ import annotations

from collections.abc import Mapping

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
)


def to_api(exc: EdgedError, names: Mapping[str, str] | None = None) -> EdgedError:
    """The engine's error as the API error (status, type, field); any other error as it is.

    The field is the engine's name for its input (`prompt`, `max_tokens`) unless `names`
    gives the dialect's own (a chat's prompt is its `messages`)."""
    if not isinstance(exc, engine.EngineError):
        return exc
    subject = exc.subject or None
    param = (names or {}).get(subject, subject) if subject else None
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
