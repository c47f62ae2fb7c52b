"""The engine's errors as edged's API errors: one translation, at the core's boundary.

Which status and kind an engine failure is does not depend on the dialect; how it is worded
on the wire does (daemon/api/errors.py, one shape per dialect).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

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


@contextmanager
def translated(names: Mapping[str, str] | None = None) -> Iterator[None]:
    """Engine errors raised inside the block come out as API errors (`to_api`), the fields
    they name in the dialect's words (`names`); API errors pass as they are."""
    try:
        yield
    except engine.EngineError as exc:
        raise to_api(exc, names) from exc
