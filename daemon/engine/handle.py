"""The asyncio side of one generation request: its chunks, usage and cancellation."""

from __future__ import annotations

import asyncio
import logging
import queue
import time
from collections.abc import AsyncIterator, Callable

from daemon.engine.types import Chunk, FinishReason, GenerationRequest, SavedSequence, Usage
from daemon.errors import EdgedError

log = logging.getLogger("edged.scheduler")


class RequestHandle:
    """The asyncio side of one submitted request: its chunks arrive on an asyncio queue."""

    def __init__(
        self, request: GenerationRequest, loop: asyncio.AbstractEventLoop, model: str = ""
    ) -> None:
        self.request = request
        self.loop = loop
        self.model = model
        history = request.resume.tokens + request.resume.pending if request.resume else ()
        self.usage = Usage(prompt_tokens=len(history) or len(request.prompt_tokens))
        self.finish_reason: FinishReason | None = None
        self.saved: SavedSequence | None = None
        self.stop_sequence: str | None = None  # the stop string that ended it, if one did
        self.beam_logprob: float | None = None
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.cancelled = False
        self._queue: asyncio.Queue[Chunk | EdgedError] = asyncio.Queue()
        self._poke: queue.SimpleQueue[object] | None = None
        self._on_done: list[Callable[[RequestHandle], None]] = []

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        if not self.cancelled and self.finish_reason is None:
            self.cancelled = True
            if self._poke is not None:
                self._poke.put(None)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Yield chunks until the one carrying `finish_reason`; raise on an engine error.

        Chunks that queued up while the reader was busy come out joined into one, so a
        slow client costs one write per burst rather than one per token.
        """
        while True:
            item = await self._queue.get()
            if isinstance(item, EdgedError):
                raise item
            while item.finish_reason is None and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if isinstance(nxt, EdgedError):
                    yield item
                    raise nxt
                item = _join(item, nxt)
            yield item
            if item.finish_reason is not None:
                return

    def add_done_callback(self, fn: Callable[[RequestHandle], None]) -> None:
        """Call `fn(handle)` once the ENGINE is done with this request (its slots freed and
        `saved` final), whether or not anybody still reads its chunks.

        It runs on the engine's thread, so it must be thread-safe and quick. An error put in
        front of the reader (`fail`) does not count: the engine may still be running.
        """
        self._on_done.append(fn)

    def fail(self, error: EdgedError) -> None:
        """End the reader's wait with `error` and stop the generation at the next step."""
        self._queue.put_nowait(error)
        self.cancel()

    def _engine_done(self) -> None:
        """Called by the engine exactly once, when it lets go of this request."""
        callbacks, self._on_done = self._on_done, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:
                log.exception("a request's done callback failed")

    def _put(self, item: Chunk | EdgedError) -> None:
        self._queue.put_nowait(item)
        if isinstance(item, EdgedError) or item.finish_reason is not None:
            self.finished_at = time.monotonic()


Out = list[tuple[RequestHandle, Chunk | EdgedError]]


def deliver(out: Out) -> None:
    """Hand engine output to each event loop with one thread-safe call per loop."""
    if not out:
        return
    by_loop: dict[asyncio.AbstractEventLoop, Out] = {}
    for h, item in out:
        by_loop.setdefault(h.loop, []).append((h, item))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            for h, _ in items:
                h.cancelled = True


def _put_all(items: Out) -> None:
    for h, item in items:
        h._put(item)


def _join(a: Chunk, b: Chunk) -> Chunk:
    """Two consecutive chunks of one sequence as one."""
    return Chunk(
        a.text + b.text,
        a.token_ids + b.token_ids,
        b.finish_reason,
        a.logprobs + b.logprobs,
        a.prompt_logprobs + b.prompt_logprobs,
        b.progress if b.progress is not None else a.progress,
    )
