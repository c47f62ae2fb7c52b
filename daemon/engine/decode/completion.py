"""Ending requests: the last chunk, the kept sequence, freed slots; every request at once.

One request ends through `_finish` (its text, stop or length, a cancel or its own error);
every request ends together when llama_decode fails, the model unloads, or its RPC worker
is lost (`retire`, `abandon`), then without touching llama.cpp.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from daemon.engine.adapters.lora import AdapterSteps
from daemon.engine.caches.keep import saved_sequence
from daemon.engine.caches.prompt_cache import PromptCache
from daemon.engine.caches.slot_kv import SlotKV
from daemon.engine.decode.active import Active, FairQueue
from daemon.engine.decode.slots import Slot
from daemon.engine.decode.worker import STOP, ContextWorker
from daemon.engine.errors import EngineError, GenerationFailed, ModelUnavailable
from daemon.engine.handle import Out, RequestHandle, deliver
from daemon.engine.speculation.drafting import Speculator
from daemon.engine.types import FinishReason

log = logging.getLogger("edged.scheduler")


class Completion(ContextWorker):
    """The scheduler's state, and how its requests end (see `Scheduler`, which sets it up)."""

    lora: AdapterSteps
    identity: str  # the model file's: what kept sequences are stamped with
    spec: Speculator
    cache: PromptCache
    kv: SlotKV
    _slots: list[Slot]
    _waiting: FairQueue
    _active: list[Active]
    cache_hit_tokens: int
    prefill_tokens: int
    _retired: EngineError | None
    _ended: bool

    def _shut_down(self) -> None:
        """Unload: running requests end with an error, kept sequences keep what they have."""
        out: Out = []
        gone = ModelUnavailable("the model was unloaded", retry_after=1)
        for a in list(self._active):
            # Their KV is intact (no decode runs now): save it like a hang-up would.
            self._finish(a, FinishReason.CANCELLED, "", out, error=gone)
        for h in self._waiting:
            self._release(h, FinishReason.ERROR)
            out.append((h, gone))
        self._waiting.clear()
        deliver(out)
        self.spec.close()

    def _detach(self, child: Active) -> None:
        """A fork whose leader went away before its prefill: prefill the prompt itself."""
        child.fork.leader = None
        req = child.handle.request
        child.pending = self.kv.reuse_prefix(child.slot, req.prompt_tokens, req.owner)

    def _finish(
        self,
        a: Active,
        reason: FinishReason,
        text: str,
        out: Out,
        tok: int | None = None,
        best_tokens: list[int] | None = None,
        error: EngineError | None = None,
    ) -> None:
        """End `a`: save what a continuation needs, free its slots, answer its reader.

        With `error` the reader gets the error instead of a last chunk; reason ERROR keeps
        the request_id entry as it was and drops the slots' KV (it may be half-updated).
        """
        text += a.decode.stops.flush()
        for child in a.fork.children:
            if child.fork.leader is a:
                self._detach(child)
        a.fork.children.clear()
        leader = a.fork.leader
        if leader is not None and a in leader.fork.children:
            leader.fork.children.remove(a)
        h = a.handle
        h.stop_sequence = a.decode.stops.matched
        failed = reason is FinishReason.ERROR
        if a.spec is not None and a.spec.valid >= 0:  # ended amid verified drafts
            self.kv.trim(a.slot, a.spec.valid)
        if h.request.keep and not failed:
            try:
                h.saved = saved_sequence(
                    a, reason, tok, best_tokens, self.ctx.state_get, self.identity
                )
            except Exception:  # the entry stays as it was; the answer still goes out
                log.exception("saving a request_id entry failed")
        if a.decode.sampler is not None:
            a.decode.sampler.close()
        now = time.monotonic()
        for s in a.slots:
            s.busy = False
            s.last_used = now
            if failed:
                self.kv.trim(s, 0)
            elif a.beams is not None:
                # Beam slots hold hypotheses other than the answer: keep the shared history.
                self.kv.trim(s, a.base)
        self._active.remove(a)
        self._release(h, reason)
        ids = tuple(best_tokens) if best_tokens is not None else () if tok is None else (tok,)
        item = error or a.chunk(text, ids, reason)
        out.append((h, item))

    def _release(self, h: RequestHandle, reason: FinishReason) -> None:
        h.finish_reason = reason
        self._done()
        h._engine_done()

    def _fail_all(self, error: EngineError) -> None:
        """llama_decode failed: end every running request; their KV may be torn, so drop it."""
        out: Out = []
        for a in list(self._active):
            self._finish(a, FinishReason.ERROR, "", out, error=error)
        deliver(out)

    def retire(self, error: EngineError, timeout: float = 10.0) -> bool:
        """Stop for good without touching llama.cpp (its objects live on a lost RPC worker):
        no new work; the scheduler thread ends every request with `error` at its next chance
        and exits, freeing nothing. Blocks until it did (True), or `timeout` seconds; a
        thread still inside llama.cpp then is parked there for good (the abort hook never
        returns), and its requests are ended from here (`abandon`). Call it off the loop."""
        with self._lock:
            self._closing = True
            self._retired = error
        self._inbox.put(STOP)
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if not self._thread.is_alive():
            return True
        self.abandon(error)
        return False

    def _end_all(self, error: EngineError) -> None:
        """(Scheduler thread, retired) Answer every request with `error`; no KV is saved,
        trimmed or freed: it lives on a lost worker."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
        handles = self._every_handle()
        self._active.clear()
        self._waiting.clear()
        for _ in handles:
            self._done()
        _fail_all(handles, error)

    def abandon(self, error: EngineError) -> None:
        """End every request with `error` from another thread, for a scheduler whose thread
        is stuck inside llama.cpp for good (a lost RPC worker); it takes no new work.

        Only for a thread that is parked for good (see `retire`, which tries the thread
        itself first): then nothing else reads or changes its queues any more."""
        with self._lock:
            self._closing = True
            if self._ended:
                return
            self._ended = True
        _fail_all(self._every_handle(), error)

    def _every_handle(self) -> list[RequestHandle]:
        """The requests running, waiting, and still in the inbox (which this empties)."""
        handles = [a.handle for a in list(self._active)] + list(self._waiting)
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return handles
            if isinstance(item, RequestHandle):
                handles.append(item)


def _fail_all(handles: list[RequestHandle], error: EngineError) -> None:
    """Answer each request with `error` and free its request_id (nothing else will)."""
    for h in handles:
        h.finish_reason = h.finish_reason or FinishReason.ERROR
    deliver([(h, error) for h in handles])
    for h in handles:
        h._engine_done()


def failure(exc: Exception) -> EngineError:
    """`exc` as the engine error its request is answered with."""
    return exc if isinstance(exc, EngineError) else GenerationFailed(f"generation failed: {exc}")
