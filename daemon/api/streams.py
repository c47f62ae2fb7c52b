"""SSE framing of engine output: OpenAI's `data:` events and the `event:`-named kind."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from daemon.api.errors import OPENAI
from daemon.api.resumable import resumable
from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.errors import EdgedError, EngineError

log = logging.getLogger("edged.api")

_encode = msgspec.json.Encoder().encode


class EventStream(ServerSentEvent):
    """An SSE response whose content type survives handlers that default to JSON."""

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> Any:
        # Litestar lets the handler's media type win over the response's own for streams.
        kwargs["media_type"] = "text/event-stream"
        # Under X-Conversation-Id the stream is recorded, and outlives its client.
        self.iterator = resumable(request, self.iterator)
        return super().to_asgi_response(app, request, **kwargs)


def sse(events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle]) -> EventStream:
    """Frame JSON events as SSE, end with `[DONE]`; a failure becomes one error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            with watched(handles):
                async for event in events:
                    yield _encode(event)
            yield b"[DONE]"
        except EdgedError as exc:
            yield _encode(OPENAI.wire(exc))
        except Exception as exc:  # never a torn stream without a word
            log.exception("stream failed")
            yield _encode(OPENAI.wire(EngineError(f"stream failed: {exc}")))
        finally:
            for h in handles:
                h.cancel()

    return EventStream(body())


Named = tuple[str, dict[str, Any]]  # an SSE event name and its JSON data


def named_sse(
    events: AsyncIterator[Named],
    handles: list[RequestHandle],
    on_error: Callable[[EdgedError], Named],
) -> EventStream:
    """Frame `event:`-named JSON events (Anthropic, Responses); a failure becomes `on_error`."""

    def message(item: Named) -> ServerSentEventMessage:
        return ServerSentEventMessage(data=_encode(item[1]).decode(), event=item[0])

    async def body() -> AsyncIterator[ServerSentEventMessage]:
        try:
            with watched(handles):
                async for item in events:
                    yield message(item)
        except EdgedError as exc:
            yield message(on_error(exc))
        except Exception as exc:  # never a torn stream without a word
            log.exception("stream failed")
            yield message(on_error(EngineError(f"stream failed: {exc}")))
        finally:
            for h in handles:
                h.cancel()

    return EventStream(body())
