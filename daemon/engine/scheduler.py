"""Continuous batching: one thread per model owns the context and decodes every sequence at once.

Each step fills ONE llama_batch with the next token of every decoding sequence plus
prompt chunks of newly admitted ones (chunked prefill), calls llama_decode once, then
samples every sequence that produced logits with its own sampler chain.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from os.path import commonpath

from daemon.engine.detokenize import IncrementalDetokenizer
from daemon.engine.llama import Batch, Context, ContextOptions, Model, SamplerChain
from daemon.engine.stops import StopMatcher
from daemon.engine.types import Chunk, FinishReason, GenerationRequest, Usage
from daemon.errors import EdgedError, EngineError, Overloaded, Unavailable

log = logging.getLogger("edged.scheduler")

_STOP = object()
_SEED_MASK = 0xFFFFFFFF


def _seed32(seed: int | None) -> int:
    """Map any non-negative seed onto llama.cpp's uint32 (whose all-ones value means random)."""
    if seed is None:
        return random.getrandbits(31)
    s = seed & _SEED_MASK
    return s - 1 if s == _SEED_MASK else s


class RequestHandle:
    """The asyncio side of one submitted request: its chunks arrive on an asyncio queue."""

    def __init__(self, request: GenerationRequest, loop: asyncio.AbstractEventLoop) -> None:
        self.request = request
        self.loop = loop
        self.usage = Usage(prompt_tokens=len(request.prompt_tokens))
        self.finish_reason: FinishReason | None = None
        self.submitted_at = time.monotonic()
        self.first_token_at: float | None = None
        self.cancelled = False
        self.model = ""  # the serving scheduler's name, for metrics and logs
        self._queue: asyncio.Queue[Chunk | EdgedError] = asyncio.Queue()
        self._poke: queue.SimpleQueue[object] | None = None

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step."""
        if not self.cancelled and self.finish_reason is None:
            self.cancelled = True
            if self._poke is not None:
                self._poke.put(None)

    def expire(self, error: EdgedError) -> None:
        """End the waiter's wait with `error` (e.g. a timeout) and stop generating."""
        self._put(error)
        self.cancel()

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Yield chunks until the one carrying `finish_reason`; raise on an engine error."""
        while True:
            item = await self._queue.get()
            if isinstance(item, EdgedError):
                raise item
            yield item
            if item.finish_reason is not None:
                return

    def _put(self, item: Chunk | EdgedError) -> None:
        self._queue.put_nowait(item)


@dataclass(eq=False)
class _Slot:
    """A sequence id and the tokens its KV cells hold, kept after a request for prefix reuse."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    busy: bool = False
    last_used: float = 0.0


@dataclass(eq=False)
class _Active:
    """A request that owns a slot."""

    handle: RequestHandle
    slot: _Slot
    pending: list[int]
    sampler: SamplerChain
    detok: IncrementalDetokenizer
    stops: StopMatcher
    generated: int = 0
    next_token: int = -1
    row: int = -1


def _common_prefix(a: list[int], b: list[int]) -> int:
    return len(commonpath([a, b]))


class Scheduler:
    """Owns one llama_context; requests enter through `submit`, chunks leave via their handle."""

    def __init__(
        self,
        model: Model,
        options: ContextOptions,
        *,
        max_queue: int,
        name: str = "model",
    ) -> None:
        self.model = model
        self.name = name
        self.ctx = Context(model, options)
        self.batch = Batch(options.n_batch, 1)
        self.n_slots = options.n_seq_max
        self.max_queue = max_queue
        self._slots = [_Slot(seq=i) for i in range(self.n_slots)]
        self._inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._waiting: deque[RequestHandle] = deque()
        self._active: list[_Active] = []
        self._outstanding = 0
        self._lock = threading.Lock()
        self._closing = False
        self.last_beat = time.monotonic()
        self.steps = 0
        self.cache_hit_tokens = 0
        self._thread = threading.Thread(target=self._run, name=f"edged-{name}", daemon=True)
        self._thread.start()

    # ---- asyncio side -------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; raises Overloaded when slots and queue are full."""
        handle = RequestHandle(request, asyncio.get_running_loop())
        handle.model = self.name
        with self._lock:
            if self._closing:
                raise Unavailable("the model is shutting down")
            if self._outstanding >= self.n_slots + self.max_queue:
                raise Overloaded(f"all {self.n_slots} slots busy and the queue is full")
            self._outstanding += 1
        handle._poke = self._inbox
        self._inbox.put(handle)
        return handle

    @property
    def outstanding(self) -> int:
        """Requests submitted and not yet finished."""
        return self._outstanding

    @property
    def busy_slots(self) -> int:
        """Slots owned by a running request."""
        return sum(1 for s in self._slots if s.busy)

    @property
    def kv_tokens(self) -> int:
        """Tokens whose KV cells the slots hold (running and kept for prefix reuse)."""
        return sum(len(s.tokens) for s in self._slots)

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is running."""
        return self._thread.is_alive()

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the thread and free llama.cpp resources."""
        with self._lock:
            self._closing = True
        self._inbox.put(_STOP)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.batch.close()
            self.ctx.close()

    # ---- scheduler thread ---------------------------------------------------------

    def _run(self) -> None:
        while True:
            if not self._take_inbox():
                break
            try:
                self._admit()
                if self._active:
                    self._step()
            except Exception as exc:  # the thread must outlive any single failure
                log.exception("scheduler step failed")
                self._fail_all(EngineError(f"generation failed: {exc}"))
            self.last_beat = time.monotonic()
        self._fail_all(Unavailable("the model was unloaded"))
        for h in self._waiting:
            self._emit_now(h, Unavailable("the model was unloaded"))
        self._waiting.clear()

    def _take_inbox(self) -> bool:
        """Move new requests into the waiting line; block when idle. False means stop."""
        idle = not self._active and not self._waiting
        while True:
            try:
                item = self._inbox.get(timeout=1.0) if idle else self._inbox.get_nowait()
            except queue.Empty:
                if idle:
                    self.last_beat = time.monotonic()
                    continue
                return True
            if item is _STOP:
                return False
            if isinstance(item, RequestHandle):
                self._waiting.append(item)
            idle = False

    def _admit(self) -> None:
        out: list[tuple[RequestHandle, Chunk | EdgedError]] = []
        for a in [a for a in self._active if a.handle.cancelled]:
            self._finish(a, FinishReason.CANCELLED, "", out)
        while self._waiting:
            h = self._waiting[0]
            if h.cancelled:
                self._waiting.popleft()
                self._release(h, FinishReason.CANCELLED, out)
                continue
            slot = self._pick_slot(h.request.prompt_tokens)
            if slot is None:
                break
            self._waiting.popleft()
            self._start(h, slot, out)
        self._deliver(out)

    def _pick_slot(self, prompt: list[int]) -> _Slot | None:
        """The free slot sharing the longest prefix with `prompt`; else the least recently used."""
        free = [s for s in self._slots if not s.busy]
        if not free:
            return None
        return max(free, key=lambda s: (_common_prefix(s.tokens, prompt), -s.last_used))

    def _start(self, h: RequestHandle, slot: _Slot, out: list) -> None:
        req = h.request
        prompt = req.prompt_tokens
        # At least one prompt token is decoded again so that it yields logits.
        keep = min(_common_prefix(slot.tokens, prompt), len(prompt) - 1)
        if keep < len(slot.tokens):
            self.ctx.seq_rm(slot.seq, keep, -1)
            del slot.tokens[keep:]
        h.usage.cached_tokens = keep
        log.debug("admit seq=%d keep=%d prompt=%d", slot.seq, keep, len(prompt))
        self.cache_hit_tokens += keep
        slot.busy = True
        sampler = SamplerChain(self.model, req.sampling, _seed32(req.sampling.seed))
        sampler.prime(prompt[-req.sampling.penalty_last_n :])
        active = _Active(
            handle=h,
            slot=slot,
            pending=list(prompt[keep:]),
            sampler=sampler,
            detok=IncrementalDetokenizer(self.model.piece),
            stops=StopMatcher(req.stop),
        )
        self._active.append(active)
        if req.max_tokens == 0:
            self._finish(active, FinishReason.LENGTH, "", out)

    def _step(self) -> None:
        b = self.batch
        b.clear()
        budget = b.capacity
        for a in self._active:
            if not a.pending:
                a.row = b.add(a.next_token, len(a.slot.tokens), a.slot.seq, True)
                a.slot.tokens.append(a.next_token)
                budget -= 1
        for a in self._active:
            if not a.pending:
                continue
            a.row = -1
            if budget <= 0:
                continue
            take = a.pending[:budget]
            done = len(take) == len(a.pending)
            pos = len(a.slot.tokens)
            seq = a.slot.seq
            last = len(take) - 1
            for j, tok in enumerate(take):
                b.add(tok, pos + j, seq, done and j == last)
            if done:
                a.row = b.n_tokens - 1
            a.slot.tokens.extend(take)
            del a.pending[: len(take)]
            budget -= len(take)

        rc = self.ctx.decode(b)
        self.steps += 1
        out: list[tuple[RequestHandle, Chunk | EdgedError]] = []
        if rc != 0:
            self._fail_all(EngineError(f"llama_decode returned {rc}"))
            return
        for a in list(self._active):
            if a.row >= 0:
                self._on_token(a, a.sampler.sample(self.ctx, a.row), out)
        self._deliver(out)

    def _on_token(self, a: _Active, tok: int, out: list) -> None:
        h = a.handle
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
        if self.model.is_eog(tok):
            self._finish(a, FinishReason.STOP, a.stops.push(a.detok.flush()), out)
            return
        a.generated += 1
        h.usage.completion_tokens = a.generated
        text = a.stops.push(a.detok.push(tok))
        if a.stops.stopped:
            self._finish(a, FinishReason.STOP, text, out, tok)
        elif a.generated >= h.request.max_tokens:
            self._finish(a, FinishReason.LENGTH, text + a.stops.push(a.detok.flush()), out, tok)
        else:
            a.next_token = tok
            if text:
                out.append((h, Chunk(text, (tok,))))

    def _finish(
        self, a: _Active, reason: FinishReason, text: str, out: list, tok: int | None = None
    ) -> None:
        text += a.stops.flush()
        a.sampler.close()
        a.slot.busy = False
        a.slot.last_used = time.monotonic()
        self._active.remove(a)
        out.append((a.handle, Chunk(text, () if tok is None else (tok,), reason)))
        self._release(a.handle, reason, None)

    def _release(self, h: RequestHandle, reason: FinishReason, out: list | None) -> None:
        h.finish_reason = reason
        with self._lock:
            self._outstanding -= 1
        if out is not None:
            out.append((h, Chunk("", (), reason)))

    def _fail_all(self, error: EdgedError) -> None:
        """End every running request with `error`; their KV is dropped since it may be torn."""
        out: list[tuple[RequestHandle, Chunk | EdgedError]] = []
        for a in list(self._active):
            a.sampler.close()
            a.slot.busy = False
            self.ctx.seq_rm(a.slot.seq, -1, -1)
            a.slot.tokens.clear()
            self._active.remove(a)
            self._release(a.handle, FinishReason.ERROR, None)
            out.append((a.handle, error))
        self._deliver(out)

    def _emit_now(self, h: RequestHandle, item: Chunk | EdgedError) -> None:
        self._release(h, FinishReason.ERROR, None)
        self._deliver([(h, item)])

    @staticmethod
    def _deliver(out: list[tuple[RequestHandle, Chunk | EdgedError]]) -> None:
        """Hand a step's output to each event loop with one thread-safe call per loop."""
        if not out:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for h, item in out:
            by_loop.setdefault(h.loop, []).append((h, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                for h, _ in items:
                    h.cancelled = True


def _put_all(items: list[tuple[RequestHandle, Chunk | EdgedError]]) -> None:
    for h, item in items:
        h._put(item)
