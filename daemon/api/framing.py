"""Streams that are not OpenAI's SSE: NDJSON lines (Ollama) and SSE without `[DONE]` (llama.cpp).

Both share one guard: the request timeout and usage bookkeeping of `watched`, a failure as one
final error object in the dialect's shape, and the engine handles cancelled however it ends.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar.response import Stream

from daemon.api.streams import EventStream
from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.errors import EdgedError, EngineError

log = logging.getLogger("edged.api")

_encode = msgspec.json.Encoder().encode

ErrorShape = Callable[[EdgedError], dict[str, Any]]


async def guarded(
    events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle], error: ErrorShape
) -> AsyncIterator[dict[str, Any]]:
    """The events, then (on a failure) one error object; never a torn stream without a word."""
    try:
        with watched(handles):
            async for event in events:
                yield event
    except EdgedError as exc:
        yield error(exc)
    except Exception as exc:
        log.exception("stream failed")
        yield error(EngineError(f"stream failed: {exc}"))
    finally:
        for h in handles:
            h.cancel()


class NdjsonStream(Stream):
    """A chunked `application/x-ndjson` response whatever the handler's default media type."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["media_type"] = "application/x-ndjson"
        return super().to_asgi_response(*args, **kwargs)


def ndjson(
    events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle], error: ErrorShape
) -> NdjsonStream:
    """One JSON object per line."""

    async def body() -> AsyncIterator[bytes]:
        async for event in guarded(events, handles, error):
            yield _encode(event) + b"\n"

    return NdjsonStream(body(), media_type="application/x-ndjson")


def plain_sse(
    events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle], error: ErrorShape
) -> EventStream:
    """`data: {json}` events with no `[DONE]` sentinel, as llama-server's own routes send."""

    async def body() -> AsyncIterator[bytes]:
        async for event in guarded(events, handles, error):
            yield _encode(event)

    return EventStream(body())
