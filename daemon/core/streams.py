"""Waiting on engine handles: one whole output, several at once, or chunks as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.engine.types import Chunk, FinishReason, TokenLogprob
from daemon.errors import EdgedError


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
