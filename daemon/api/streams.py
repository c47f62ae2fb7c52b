"""Consuming engine handles from the HTTP side: collect, merge, SSE framing."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from litestar.response import ServerSentEvent
from litestar.response.sse import ServerSentEventMessage

from daemon.api.errors import to_api
from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.engine.types import Chunk, FinishReason, TokenLogprob
from daemon.errors import EdgedError, EngineError

log = logging.getLogger("edged.api")

_encode = msgspec.json.Encoder().encode


@dataclass
class Collected:
    """The whole output of one finished handle."""

    text: str
    finish_reason: FinishReason
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


async def collect(handle: RequestHandle) -> Collected:
    """Wait for a handle to finish; cancel it if the waiter goes away."""
    parts: list[str] = []
    out = Collected("", FinishReason.ERROR, [])
    reason: FinishReason | None = None
    try:
        with watched([handle]):
            async for chunk in handle.chunks():
                parts.append(chunk.text)
                out.token_ids.extend(chunk.token_ids)
                out.logprobs.extend(chunk.logprobs)
                out.prompt_logprobs.extend(chunk.prompt_logprobs)
                reason = chunk.finish_reason
    finally:
        if reason is None:
            handle.cancel()
    assert reason is not None
    out.text = "".join(parts)
    out.finish_reason = reason
    return out


async def collect_all(handles: list[RequestHandle]) -> list[Collected]:
    """Collect several handles concurrently; cancel all of them on any failure."""
    try:
        return list(await asyncio.gather(*(collect(h) for h in handles)))
    finally:
        for h in handles:
            h.cancel()


async def merge(handles: list[RequestHandle]) -> AsyncIterator[tuple[int, Chunk]]:
    """Interleave the chunks of several handles as they arrive, tagged with their index."""
    if len(handles) == 1:
        async for chunk in handles[0].chunks():
            yield 0, chunk
        return
    out: asyncio.Queue[tuple[int, Chunk] | EdgedError | None] = asyncio.Queue()

    async def pump(i: int, h: RequestHandle) -> None:
        try:
            async for chunk in h.chunks():
                out.put_nowait((i, chunk))
        except EdgedError as exc:
            out.put_nowait(exc)
        finally:
            out.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(handles)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await out.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, EdgedError):
                raise item
            else:
                yield item
    finally:
        for h in handles:
            h.cancel()
        for t in tasks:
            t.cancel()


class EventStream(ServerSentEvent):
    """An SSE response whose content type survives handlers that default to JSON."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> Any:
        # Litestar lets the handler's media type win over the response's own for streams.
        kwargs["media_type"] = "text/event-stream"
        return super().to_asgi_response(*args, **kwargs)


def sse(events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle]) -> EventStream:
    """Frame JSON events as SSE, end with `[DONE]`; a failure becomes one error event."""

    async def body() -> AsyncIterator[bytes]:
        try:
            with watched(handles):
                async for event in events:
                    yield _encode(event)
            yield b"[DONE]"
        except EdgedError as exc:
            yield _encode(to_api(exc).to_wire())
        except Exception as exc:  # never a torn stream without a word
            log.exception("stream failed")
            yield _encode(EngineError(f"stream failed: {exc}").to_wire())
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
