"""Continuous batching: one thread per model owns the context and decodes every sequence at once.

Each step fills ONE llama_batch with the next token of every decoding sequence plus
prompt chunks of newly admitted ones (chunked prefill), calls llama_decode once, then
samples every sequence that produced logits with its own sampler chain (or advances its
beam search).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter

from daemon.engine.adapters.lora import Adapters, AdapterSteps
from daemon.engine.caches.keep import beam_search, saved_sequence
from daemon.engine.caches.prompt_cache import PromptCache
from daemon.engine.caches.slot_kv import SlotKV
from daemon.engine.decode.active import Active, Beams, Decode, FairQueue
from daemon.engine.decode.beam import log_softmax, repetition_penalize
from daemon.engine.decode.detokenize import IncrementalDetokenizer
from daemon.engine.decode.logprobs import token_logprob
from daemon.engine.decode.slots import Slot, chunk_size, pick_slots, reassign, seed32
from daemon.engine.decode.stops import StopMatcher
from daemon.engine.decode.worker import STOP, ContextWorker
from daemon.engine.errors import EngineError, GenerationFailed, ModelChanged, ModelUnavailable
from daemon.engine.handle import Out, RequestHandle, deliver
from daemon.engine.native.llama import ContextOptions, Model, SamplerChain
from daemon.engine.speculation.drafting import SpecOptions, Speculator
from daemon.engine.types import Chunk, FinishReason, GenerationRequest

log = logging.getLogger("edged.scheduler")


class Scheduler(ContextWorker):
    """Owns one llama_context; requests enter through `submit`, chunks leave via their handle."""

    def __init__(
        self,
        model: Model,
        options: ContextOptions,
        *,
        max_queue: int,
        name: str = "model",
        max_per_owner: int | None = None,
        adapters: Adapters | None = None,
        speculation: SpecOptions | None = None,
        prompt_cache: PromptCache | None = None,
        identity: str = "",
    ) -> None:
        super().__init__(model, options, max_queue=max_queue, name=name, thread=f"edged-{name}")
        self.lora = AdapterSteps(adapters)
        # The model file's identity: what kept sequences are stamped with and checked against.
        self.identity = identity
        self.spec = Speculator(
            speculation or SpecOptions(), options, self.ctx, self.batch, adapters
        )
        # Below the slots; also the owner rule of slot prefix reuse (off: nothing kept).
        self.cache = prompt_cache if prompt_cache is not None else PromptCache(0)
        self.kv = SlotKV(self.ctx, self.cache)
        self.spec.shareable = self.cache.shareable  # the draft context's KV: the same rule
        self._slots = [Slot(seq=i) for i in range(self.n_slots)]
        self._waiting = FairQueue(max_per_owner)
        self._active: list[Active] = []
        self.cache_hit_tokens = 0
        self.prefill_tokens = 0
        # Set by `retire` (a lost RPC worker): stop at the next chance, touch no llama.cpp.
        self._retired: EngineError | None = None
        self._ended = False  # every request was answered for good (retire or abandon)
        self._thread.start()

    # ---- asyncio side -------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        """Queue a request; raises Overloaded when slots and queue are full."""
        handle = RequestHandle(request, asyncio.get_running_loop(), self.name)
        handle._poke = self._inbox
        self._enqueue(handle)
        return handle

    @property
    def busy_slots(self) -> int:
        """Slots owned by a running request."""
        return sum(1 for s in self._slots if s.busy)

    def slot_states(self) -> list[tuple[int, bool, int]]:
        """(sequence id, busy, tokens held) of every slot, for status pages."""
        return [(s.seq, s.busy, len(s.tokens)) for s in self._slots]

    @property
    def cached_tokens(self) -> int:
        """Tokens held in the KV cache across all slots."""
        return sum(len(s.tokens) for s in self._slots)

    def close(self, timeout: float | None = None) -> bool:
        """Stop the thread and free the context; the prompt cache goes with the model."""
        stopped = super().close(timeout)
        if stopped:
            self.cache.clear()
        return stopped

    # ---- scheduler thread ---------------------------------------------------------

    def _run(self) -> None:
        while self._retired is None:
            if not self._take_inbox():
                break
            try:
                self._admit()
                if self._active and self._retired is None:
                    self._step()
            except Exception as exc:  # the thread must outlive any single failure
                log.exception("scheduler step failed")
                self._fail_all(GenerationFailed(f"generation failed: {exc}"))
            self.last_beat = time.monotonic()
        if self._retired is not None:
            self._end_all(self._retired)
            return
        self._shut_down()

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
            if item is STOP:
                return False
            if isinstance(item, RequestHandle):
                self._waiting.append(item)
            idle = False

    def _admit(self) -> None:
        """Give free slots to waiting requests, one owner after the other (round-robin)."""
        out: Out = []
        for a in [a for a in self._active if a.handle.cancelled]:
            self._finish(a, FinishReason.CANCELLED, "", out)
        running = Counter(a.owner for a in self._active)
        while True:
            heads = self._waiting.heads(running)
            if not heads:
                break
            h = heads[0]  # whose turn it is; when it does not fit, nobody overtakes it
            if h.cancelled:
                self._waiting.remove(h)
                self._release(h, FinishReason.CANCELLED)
                out.append((h, Chunk("", (), FinishReason.CANCELLED)))
                continue
            try:
                admitted = self._admit_one(h, out)
            except Exception as exc:  # this request's setup failed: it alone ends
                log.exception("admitting a request failed")
                self._abort(h, exc, out)
                continue
            if not admitted:
                break
            running[h.request.owner] += 1
            self._waiting.served(h.request.owner)
        deliver(out)

    def _admit_one(self, h: RequestHandle, out: Out) -> bool:
        """Start `h` (and its fork group) if slots allow; False when it must wait."""
        req = h.request
        saved = req.resume
        self.lora.check(req)
        if saved is not None and saved.model_id != self.identity:
            # Computed by another file under this name: its KV means nothing to these weights.
            raise ModelChanged(
                "the model file changed since this sequence was kept; it cannot continue",
                subject="request_id",
            )
        if saved is not None and (saved.finished or not saved.pending or req.max_tokens == 0):
            # Nothing to generate: answer without touching any slot, and keep the entry
            # exactly as it was (a slot may hold another request's tokens by now).
            self._waiting.remove(h)
            ended = saved.finished or not saved.pending
            reason = FinishReason.STOP if ended else FinishReason.LENGTH
            h.saved = saved
            self._release(h, reason)
            out.append((h, Chunk("", (), reason)))
            return True
        if req.fork_group is not None and req.fork_size > 1:
            return self._admit_group(h, out)
        slots = self._pick_slots(req)
        if slots is None:
            return False
        self._waiting.remove(h)
        self._start(h, slots, out)
        return True

    def _abort(self, h: RequestHandle, exc: Exception, out: Out) -> None:
        """A request whose admission raised: free whatever it took, fail it alone."""
        for a in [a for a in self._active if a.handle is h]:
            self._finish(a, FinishReason.ERROR, "", out, error=_failed(exc))
            return
        if h in self._waiting:
            self._waiting.remove(h)
        if h.finish_reason is None:
            self._release(h, FinishReason.ERROR)
            out.append((h, _failed(exc)))

    def _admit_group(self, leader: RequestHandle, out: Out) -> bool:
        """Admit the n choices of one prompt together: one prefill, KV copied at the fork."""
        req = leader.request
        group = [h for h in self._waiting if h.request.fork_group == req.fork_group]
        free = [s for s in self._slots if not s.busy]
        if len(group) < req.fork_size or len(free) < len(group):
            return False  # siblings still on their way, or not enough slots yet
        for h in group:
            self._waiting.remove(h)
        slots = self._pick_slots(req)
        assert slots is not None
        try:
            head = self._start(leader, slots, out)
        except Exception as exc:  # the whole group ends with its leader's failure
            for h in group:
                self._abort(h, exc, out)
            return True
        for h in group[1:]:
            try:
                child = self._start(h, pick_slots(self._slots, 1, []), out, fork_of=head)
            except Exception as exc:
                self._abort(h, exc, out)
                continue
            if child is not None and head is not None:
                head.fork.children.append(child)
        return True

    def _pick_slots(self, req: GenerationRequest) -> list[Slot] | None:
        """Free slots for a request (see `pick_slots`), or None when too few are free."""
        if sum(1 for s in self._slots if not s.busy) < req.n_slots:
            return None
        resume = req.resume
        want = list(resume.tokens + resume.pending) if resume else req.prompt_tokens
        return pick_slots(self._slots, req.n_slots, want, req.lora, req.owner, self.cache.shareable)

    def _start(
        self, h: RequestHandle, slots: list[Slot], out: Out, fork_of: Active | None = None
    ) -> Active | None:
        req = h.request
        slot = slots[0]
        # Sampler and search first: if they refuse the request, no slot was touched yet.
        sampler = None
        beams = None
        if req.beams is not None:
            beams = Beams(beam_search(req, self.model.eog_tokens), slots)
        else:
            sampler = SamplerChain(self.model, req.sampling, seed32(req.sampling.seed))
        carry = req.resume.tail if req.resume is not None else b""
        detok = IncrementalDetokenizer(self.model.piece, carry)
        decode = Decode(sampler, detok, StopMatcher(req.stop))
        active = Active(h, slot, [], decode, len(req.prompt_tokens), 0, beams)
        for s in slots:
            s.busy = True
            if s.lora != req.lora:  # its KV came from other adapters: none of it is ours
                self.kv.clear(s)  # kept in the prompt cache for requests of that set
                s.lora = req.lora
        self._active.append(active)
        for s in slots if fork_of is not None else slots[1:]:
            # Refilled by a copy of another slot's KV (or, detached, by our own prompt).
            self.kv.clear(s)
        if fork_of is not None:
            # KV arrives from the leader after its prefill; nothing to decode of our own.
            pending = []
        elif req.resume is not None:
            pending = self.kv.restore(slot, req.resume, req.owner)
            active.n_prompt = req.resume.n_prompt
        elif req.prompt_logprobs:
            # Scoring needs the logits of every prompt position: nothing can come from cache.
            self.kv.clear(slot)
            pending = list(req.prompt_tokens)
        else:
            pending = self.kv.reuse_prefix(slot, req.prompt_tokens, req.owner)
        for s in slots:
            s.owner = req.owner
        active.pending = pending
        h.usage.cached_tokens = len(slot.tokens)
        self.cache_hit_tokens += len(slot.tokens)
        log.debug("admit seq=%d cached=%d pending=%d", slot.seq, len(slot.tokens), len(pending))
        history = list(req.prompt_tokens) if fork_of is not None else slot.tokens + pending
        active.base = len(history)
        if sampler is not None:
            sampler.prime(history[-req.sampling.penalty_last_n :])
        self.spec.attach(active, history)
        if fork_of is not None:
            active.fork.leader = fork_of
            if fork_of not in self._active:  # the leader already ended: prefill on our own
                self._detach(active)
            return active
        if req.max_tokens == 0 and not req.prompt_logprobs:
            self._finish(active, FinishReason.LENGTH, "", out)
            return None
        return active

    def _detach(self, child: Active) -> None:
        """A fork whose leader went away before its prefill: prefill the prompt itself."""
        child.fork.leader = None
        req = child.handle.request
        child.pending = self.kv.reuse_prefix(child.slot, req.prompt_tokens, req.owner)

    def _fork(self, leader: Active, out: Out) -> None:
        """The leader's prompt is in its KV: copy it to each sibling, sample their first token."""
        if not leader.fork.children:
            return
        state = self.ctx.state_get(leader.slot.seq)
        for child in leader.fork.children:
            if child not in self._active:
                continue
            try:
                self.kv.trim(child.slot, 0)
                if not self.ctx.state_set(child.slot.seq, state):
                    self._detach(child)
                    continue
                child.slot.tokens = list(leader.slot.tokens)
                child.slot.exact = leader.slot.exact
                child.fork.leader = None
                child.scoring.logprobs = list(leader.scoring.logprobs)
                assert child.decode.sampler is not None
                tok = child.decode.sampler.sample(self.ctx, leader.row)
                self._on_token(child, tok, out, leader.row)
            except Exception as exc:  # one sibling's sampling failed: that sibling alone
                log.exception("a forked choice failed")
                self._finish(child, FinishReason.ERROR, "", out, error=_failed(exc))
        leader.fork.children.clear()

    def _step(self) -> None:
        b = self.batch
        b.clear()
        # One adapter set per llama_decode (llama.cpp applies them per context).
        lora = self.lora.serve(self.ctx, (a.handle.request.lora for a in self._active))
        group = [a for a in self._active if a.handle.request.lora == lora]
        # Plan first (decode rows, then prompt chunks first come first served), then lay the
        # rows out in ascending sequence id: llama.cpp splits a batch whose sequences are out
        # of order with one KV stream each into several micro-batches (decode ~25 % slower).
        rows: list[tuple[int, Active, int]] = []  # (seq, request, beam index or -1)
        for a in group:
            if a.pending or a.fork.leader is not None:
                continue
            if a.beams is not None:
                n = min(len(a.beams.search.beams), len(a.beams.slots))
                a.beams.rows = [-1] * n
                rows.extend((a.beams.slots[i].seq, a, i) for i in range(n))
            else:
                rows.append((a.slot.seq, a, -1))
        # One row per slot at most, and the batch holds at least one per slot (see
        # LoadedModel), so decode rows always fit; drafts and prompt chunks share the rest.
        started = time.perf_counter()
        budget = b.capacity - len(rows)
        budget -= self.spec.plan(group, [seq for seq, _, _ in rows], budget)
        chunks: dict[int, int] = {}
        for a in group:
            if not a.pending:
                continue
            a.row = -1
            n = chunk_size(len(a.pending), budget)
            if n:
                chunks[id(a)] = n
                rows.append((a.slot.seq, a, -1))
                budget -= n
        rows.sort(key=lambda r: r[0])
        for seq, a, i in rows:
            if a.beams is not None and not a.pending:
                slot = a.beams.slots[i]
                token = a.beams.search.beams[i].tokens[-1]
                a.beams.rows[i] = b.add(token, len(slot.tokens), seq, True)
                slot.tokens.append(token)
            elif not a.pending:
                a.row = b.add(a.decode.next_token, len(a.slot.tokens), seq, True)
                a.slot.tokens.append(a.decode.next_token)
                if a.spec is not None and a.spec.draft:
                    self.spec.add_rows(a, b)
            else:
                self._add_chunk(a, chunks[id(a)])
        if not rows:
            return
        rc = self._llama_decode(b)
        if self._retired is not None:  # retired meanwhile: its KV lives on a lost worker
            return
        self.steps += 1
        out: Out = []
        if rc != 0:
            self._fail_all(GenerationFailed(f"llama_decode returned {rc}"))
            return
        for a in group:  # the others' rows are from earlier steps: not theirs to read now
            if a not in self._active:
                continue  # ended by a sibling's fork this step
            try:
                self._after_decode(a, out)
            except Exception as exc:  # sampling, grammar, scoring, text: this request alone
                log.exception("a sequence failed after decode")
                if a in self._active:
                    self._finish(a, FinishReason.ERROR, "", out, error=_failed(exc))
        if not chunks:  # decode-only steps feed the step-cost model of speculation
            self.spec.observe(time.perf_counter() - started - self.spec.draft_seconds)
        deliver(out)

    def _after_decode(self, a: Active, out: Out) -> None:
        """Use this step's logits of `a`: score its prompt, sample, or advance its beams."""
        if a.scoring.rows:
            a.scoring.score(self.ctx.logits_np, a.handle.request)
        if a.beams is not None:
            if a.row >= 0 or (a.beams.rows and not a.pending):
                self._advance_beams(a, out)
        elif a.row >= 0:
            if a.fork.children:
                self._fork(a, out)
            if a.handle.request.max_tokens == 0:
                self._finish(a, FinishReason.LENGTH, "", out)  # scoring only
                return
            assert a.decode.sampler is not None
            if a.spec is not None and a.spec.draft:
                self._verify(a, out)
                return
            self._on_token(a, a.decode.sampler.sample(self.ctx, a.row), out, a.row)

    def _verify(self, a: Active, out: Out) -> None:
        """Keep the drafts the request's own sampler agrees with; drop the rest's KV."""
        sampler = a.decode.sampler
        assert a.spec is not None and sampler is not None
        toks, rows, pos0 = self.spec.verify(a, lambda row: sampler.sample(self.ctx, row))
        self.kv.trim(a.slot, pos0 + len(toks))
        for i, tok in enumerate(toks):
            a.spec.valid = pos0 + 1 + i  # the KV a finish at this token leaves (see _finish)
            self._on_token(a, tok, out, rows[i])
            if a not in self._active:
                return
        a.spec.valid = -1

    def _add_chunk(self, a: Active, n: int) -> None:
        """Put the next `n` prompt tokens of `a` into the batch."""
        b = self.batch
        take = a.pending[:n]
        done = n == len(a.pending)
        slot = a.slot
        pos = len(slot.tokens)
        score = a.handle.request.prompt_logprobs
        for j, tok in enumerate(take):
            row = b.add(tok, pos + j, slot.seq, score or (done and j == n - 1))
            if score:
                a.scoring.rows.append((row, pos + j))
        if done:
            a.row = b.n_tokens - 1
        if n > 1 and slot.exact == pos:
            slot.exact = pos + n
        slot.tokens.extend(take)
        del a.pending[:n]
        self.prefill_tokens += n

    def _on_token(self, a: Active, tok: int, out: Out, row: int) -> None:
        h = a.handle
        d = a.decode
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
        if self.model.is_eog(tok):
            d.next_token = -1
            self._finish(a, FinishReason.STOP, d.stops.push(d.detok.flush()), out)
            return
        if h.request.logprobs is not None:
            d.logprobs.append(token_logprob(self.ctx.logits_np(row), tok, h.request.logprobs))
        d.generated += 1
        d.next_token = tok
        if a.spec is not None:
            a.spec.index.extend([tok])
        h.usage.completion_tokens = d.generated
        text = d.stops.push(d.detok.push(tok))
        if d.stops.stopped:
            self._finish(a, FinishReason.STOP, text, out, tok)
        elif d.generated >= h.request.max_tokens:
            if not h.request.keep:  # a kept sequence carries a cut character over instead
                text += d.stops.push(d.detok.flush())
            self._finish(a, FinishReason.LENGTH, text, out, tok)
        elif text:
            out.append((h, a.chunk(text, (tok,), None)))
        else:
            d.held.append(tok)  # reported with the chunk that releases its text

    def _advance_beams(self, a: Active, out: Out) -> None:
        """Score every beam's next token, reorder the beams' KV, finish when the search ends."""
        assert a.beams is not None
        group = a.beams
        rows = [a.row] if a.row >= 0 else group.rows
        a.row = -1
        penalty = a.handle.request.sampling.repetition_penalty
        logprobs = []
        for r, slot in zip(rows, group.slots, strict=False):
            logits = self.ctx.logits_np(r)
            if penalty != 1.0:
                logits = repetition_penalize(logits, slot.tokens, penalty)
            logprobs.append(log_softmax(logits))
        h = a.handle
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
        parents = group.search.step(logprobs)
        h.usage.completion_tokens = max((len(b.tokens) for b in group.search.beams), default=0)
        if group.search.done:
            best = group.search.best()
            h.beam_logprob = best.sum_logprobs
            a.decode.generated = len(best.tokens)
            h.usage.completion_tokens = a.decode.generated
            reason = FinishReason.STOP if best.ended else FinishReason.LENGTH
            detok = a.decode.detok
            text = "".join(detok.push(t) for t in best.tokens)
            if reason is FinishReason.STOP or not h.request.keep:
                text += detok.flush()
            self._finish(a, reason, text, out, best_tokens=best.tokens)
            return
        group.slots = reassign(self.ctx, group.slots, [p for p, _ in parents])

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


def _failed(exc: Exception) -> EngineError:
    return exc if isinstance(exc, EngineError) else GenerationFailed(f"generation failed: {exc}")
