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
import time
from collections import deque
from dataclasses import dataclass, field

from daemon.engine.beam import BeamSearch, Sampling, log_softmax, repetition_penalize
from daemon.engine.detokenize import IncrementalDetokenizer
from daemon.engine.handle import RequestHandle
from daemon.engine.llama import ContextOptions, Model, SamplerChain
from daemon.engine.logprobs import token_logprob
from daemon.engine.slots import Slot, chunk_size, common_prefix, reassign, seed32
from daemon.engine.stops import StopMatcher
from daemon.engine.types import (
    Chunk,
    FinishReason,
    GenerationRequest,
    SavedSequence,
    TokenLogprob,
)
from daemon.engine.worker import STOP, ContextWorker
from daemon.errors import EdgedError, EngineError, Unavailable

log = logging.getLogger("edged.scheduler")


@dataclass(eq=False)
class _Beams:
    """A beam search in flight: one slot per beam, and the search state."""

    search: BeamSearch
    slots: list[Slot]
    rows: list[int] = field(default_factory=list)


@dataclass(eq=False)
class _Active:
    """A request that owns one slot (or several, for beams)."""

    handle: RequestHandle
    slot: Slot
    pending: list[int]
    sampler: SamplerChain | None
    detok: IncrementalDetokenizer
    stops: StopMatcher
    n_prompt: int
    beams: _Beams | None = None
    generated: int = 0
    next_token: int = -1
    row: int = -1
    # prompt scoring (echo): batch rows of the current chunk and their positions
    score_rows: list[tuple[int, int]] = field(default_factory=list)
    # n > 1: siblings wait for this leader's prefill, then take a copy of its KV
    forks: list[_Active] = field(default_factory=list)
    leader: _Active | None = None
    prompt_lp: list[TokenLogprob] = field(default_factory=list)
    lp_pending: list[TokenLogprob] = field(default_factory=list)

    @property
    def slots(self) -> list[Slot]:
        return self.beams.slots if self.beams else [self.slot]


Out = list[tuple[RequestHandle, Chunk | EdgedError]]


class Scheduler(ContextWorker):
    """Owns one llama_context; requests enter through `submit`, chunks leave via their handle."""

    def __init__(
        self,
        model: Model,
        options: ContextOptions,
        *,
        max_queue: int,
        name: str = "model",
    ) -> None:
        super().__init__(model, options, max_queue=max_queue, name=name, thread=f"edged-{name}")
        self._slots = [Slot(seq=i) for i in range(self.n_slots)]
        self._waiting: deque[RequestHandle] = deque()
        self._active: list[_Active] = []
        self.cache_hit_tokens = 0
        self.prefill_tokens = 0
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

    @property
    def cached_tokens(self) -> int:
        """Tokens held in the KV cache across all slots."""
        return sum(len(s.tokens) for s in self._slots)

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
        out: Out = []
        for h in self._waiting:
            self._release(h, FinishReason.ERROR)
            out.append((h, Unavailable("the model was unloaded")))
        self._waiting.clear()
        self._deliver(out)

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
        out: Out = []
        for a in [a for a in self._active if a.handle.cancelled]:
            self._finish(a, FinishReason.CANCELLED, "", out)
        while self._waiting:
            h = self._waiting[0]
            if h.cancelled:
                self._waiting.popleft()
                self._release(h, FinishReason.CANCELLED)
                out.append((h, Chunk("", (), FinishReason.CANCELLED)))
                continue
            if h.request.fork_group is not None and h.request.fork_size > 1:
                if not self._admit_group(h, out):
                    break
                continue
            slots = self._pick_slots(h.request)
            if slots is None:
                break
            self._waiting.popleft()
            self._start(h, slots, out)
        self._deliver(out)

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
        head = self._start(leader, slots, out)
        for h in group[1:]:
            free = [s for s in self._slots if not s.busy]
            free.sort(key=lambda s: s.last_used)
            child = self._start(h, [free[0]], out, fork_of=head)
            if child is not None and head is not None:
                head.forks.append(child)
        return True

    def _pick_slots(self, req: GenerationRequest) -> list[Slot] | None:
        """Free slots for a request: the one sharing the longest prefix first, then LRU ones."""
        free = [s for s in self._slots if not s.busy]
        if len(free) < req.n_slots:
            return None
        resume = req.resume
        want = list(resume.tokens + resume.pending) if resume else req.prompt_tokens
        free.sort(key=lambda s: (common_prefix(s.tokens, want), -s.last_used), reverse=True)
        return free[: req.n_slots]

    def _start(
        self, h: RequestHandle, slots: list[Slot], out: Out, fork_of: _Active | None = None
    ) -> _Active | None:
        req = h.request
        slot = slots[0]
        for s in slots:
            s.busy = True
        if fork_of is not None:
            # KV arrives from the leader after its prefill; nothing to decode of our own.
            pending, n_prompt = [], len(req.prompt_tokens)
        elif req.resume is not None:
            pending, n_prompt = self._restore(slot, req.resume), req.resume.n_prompt
        elif req.prompt_logprobs:
            # Scoring needs the logits of every prompt position: nothing can come from cache.
            self._trim(slot, 0)
            pending, n_prompt = list(req.prompt_tokens), len(req.prompt_tokens)
        else:
            pending, n_prompt = self._reuse_prefix(slot, req.prompt_tokens), len(req.prompt_tokens)
        h.usage.cached_tokens = len(slot.tokens)
        self.cache_hit_tokens += len(slot.tokens)
        log.debug("admit seq=%d cached=%d pending=%d", slot.seq, len(slot.tokens), len(pending))
        history = list(req.prompt_tokens) if fork_of is not None else slot.tokens + pending
        sampler = None
        beams = None
        if req.beams is not None:
            beams = _Beams(self._beam_search(req), slots)
        else:
            sampler = SamplerChain(self.model, req.sampling, seed32(req.sampling.seed))
            sampler.prime(history[-req.sampling.penalty_last_n :])
        active = _Active(
            handle=h,
            slot=slot,
            pending=pending,
            sampler=sampler,
            detok=IncrementalDetokenizer(self.model.piece),
            stops=StopMatcher(req.stop),
            n_prompt=n_prompt,
            beams=beams,
            leader=fork_of,
        )
        self._active.append(active)
        if fork_of is not None:
            if fork_of not in self._active:  # the leader already ended: prefill on our own
                self._detach(active)
            return active
        if not pending:
            self._finish(active, FinishReason.STOP, "", out)  # a kept sequence that ended
            return None
        if req.max_tokens == 0 and not req.prompt_logprobs:
            self._finish(active, FinishReason.LENGTH, "", out)
            return None
        return active

    def _detach(self, child: _Active) -> None:
        """A fork whose leader went away before its prefill: prefill the prompt itself."""
        child.leader = None
        child.pending = self._reuse_prefix(child.slot, child.handle.request.prompt_tokens)

    def _fork(self, leader: _Active, out: Out) -> None:
        """The leader's prompt is in its KV: copy it to each sibling, sample their first token."""
        if not leader.forks:
            return
        state = self.ctx.state_get(leader.slot.seq)
        for child in leader.forks:
            if child not in self._active:
                continue
            self._trim(child.slot, 0)
            if not self.ctx.state_set(child.slot.seq, state):
                self._detach(child)
                continue
            child.slot.tokens = list(leader.slot.tokens)
            child.slot.exact = leader.slot.exact
            child.leader = None
            child.prompt_lp = list(leader.prompt_lp)
            assert child.sampler is not None
            self._on_token(child, child.sampler.sample(self.ctx, leader.row), out, leader.row)
        leader.forks.clear()

    def _beam_search(self, req: GenerationRequest) -> BeamSearch:
        assert req.beams is not None
        sp = req.sampling
        sampling = (
            Sampling(sp.temperature, sp.top_k, sp.top_p, seed32(sp.seed))
            if req.beams.do_sample
            else None
        )
        return BeamSearch(
            req.beams.num_beams,
            length_penalty=req.beams.length_penalty,
            eos=self.model.eog_tokens,
            max_new_tokens=req.max_tokens,
            sampling=sampling,
        )

    def _reuse_prefix(self, slot: Slot, prompt: list[int]) -> list[int]:
        """Keep the slot's KV for the shared prefix; return the prompt tokens still to decode."""
        # At least two prompt tokens are decoded again: the last one yields logits, and a
        # multi-token chunk keeps them identical to those of a fresh prefill.
        keep = max(0, min(common_prefix(slot.tokens, prompt), slot.exact, len(prompt) - 2))
        self._trim(slot, keep)
        return list(prompt[keep:])

    def _restore(self, slot: Slot, saved: SavedSequence) -> list[int]:
        """Put a kept sequence back into `slot`; return the tokens still to feed."""
        if saved.finished or not saved.pending:
            return []
        target = list(saved.tokens)
        keep = common_prefix(slot.tokens, target)
        if keep < len(target) and saved.state is not None:
            self._trim(slot, 0)
            if self.ctx.state_set(slot.seq, saved.state):
                slot.tokens = target
                slot.exact = saved.exact
                return list(saved.pending)
            self.ctx.seq_rm(slot.seq)
            keep = 0
        self._trim(slot, keep)
        return target[keep:] + list(saved.pending)

    def _trim(self, slot: Slot, keep: int) -> None:
        if keep < len(slot.tokens):
            self.ctx.seq_rm(slot.seq, keep, -1)
            del slot.tokens[keep:]
        slot.exact = min(slot.exact, keep)

    def _step(self) -> None:
        b = self.batch
        b.clear()
        # Plan first (decode rows, then prompt chunks first come first served), then lay the
        # rows out in ascending sequence id: llama.cpp splits a batch whose sequences are out
        # of order with one KV stream each into several micro-batches (decode ~25 % slower).
        rows: list[tuple[int, _Active, int]] = []  # (seq, request, beam index or -1)
        for a in self._active:
            if a.pending or a.leader is not None:
                continue
            if a.beams is not None:
                n = min(len(a.beams.search.beams), len(a.beams.slots))
                a.beams.rows = [-1] * n
                rows.extend((a.beams.slots[i].seq, a, i) for i in range(n))
            else:
                rows.append((a.slot.seq, a, -1))
        budget = b.capacity - len(rows)
        chunks: dict[int, int] = {}
        for a in self._active:
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
                a.row = b.add(a.next_token, len(a.slot.tokens), seq, True)
                a.slot.tokens.append(a.next_token)
            else:
                self._add_chunk(a, chunks[id(a)])

        rc = self.ctx.decode(b)
        self.steps += 1
        out: Out = []
        if rc != 0:
            self._fail_all(EngineError(f"llama_decode returned {rc}"))
            return
        for a in list(self._active):
            if a.score_rows:
                self._score_prompt(a)
            if a.beams is not None:
                if a.row >= 0 or (a.beams.rows and not a.pending):
                    self._advance_beams(a, out)
            elif a.row >= 0:
                if a.forks:
                    self._fork(a, out)
                if a.handle.request.max_tokens == 0:
                    self._finish(a, FinishReason.LENGTH, "", out)  # scoring only
                    continue
                assert a.sampler is not None
                self._on_token(a, a.sampler.sample(self.ctx, a.row), out, a.row)
        self._deliver(out)

    def _add_chunk(self, a: _Active, n: int) -> None:
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
                a.score_rows.append((row, pos + j))
        if done:
            a.row = b.n_tokens - 1
        if n > 1 and slot.exact == pos:
            slot.exact = pos + n
        slot.tokens.extend(take)
        del a.pending[:n]
        self.prefill_tokens += n

    def _score_prompt(self, a: _Active) -> None:
        """Log-probability of each prompt token given the ones before it (echo + logprobs)."""
        prompt = a.handle.request.prompt_tokens
        top = a.handle.request.logprobs or 0
        for row, pos in a.score_rows:
            if pos + 1 < len(prompt):
                a.prompt_lp.append(token_logprob(self.ctx.logits_np(row), prompt[pos + 1], top))
        a.score_rows.clear()

    def _on_token(self, a: _Active, tok: int, out: Out, row: int) -> None:
        h = a.handle
        if h.first_token_at is None:
            h.first_token_at = time.monotonic()
        if self.model.is_eog(tok):
            a.next_token = -1
            self._finish(a, FinishReason.STOP, a.stops.push(a.detok.flush()), out)
            return
        if h.request.logprobs is not None:
            a.lp_pending.append(token_logprob(self.ctx.logits_np(row), tok, h.request.logprobs))
        a.generated += 1
        a.next_token = tok
        h.usage.completion_tokens = a.generated
        text = a.stops.push(a.detok.push(tok))
        if a.stops.stopped:
            self._finish(a, FinishReason.STOP, text, out, tok)
        elif a.generated >= h.request.max_tokens:
            self._finish(a, FinishReason.LENGTH, text + a.stops.push(a.detok.flush()), out, tok)
        elif text:
            out.append((h, self._chunk(a, text, (tok,), None)))

    @staticmethod
    def _chunk(
        a: _Active, text: str, tokens: tuple[int, ...], reason: FinishReason | None
    ) -> Chunk:
        """A chunk carrying the log-probabilities gathered since the previous one."""
        lps, a.lp_pending = tuple(a.lp_pending), []
        plps, a.prompt_lp = tuple(a.prompt_lp), []
        return Chunk(text, tokens, reason, lps, plps)

    def _advance_beams(self, a: _Active, out: Out) -> None:
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
            a.generated = len(best.tokens)
            h.usage.completion_tokens = a.generated
            text = self.model.detokenize(best.tokens)
            reason = FinishReason.STOP if best.ended else FinishReason.LENGTH
            self._finish(a, reason, text, out, best_tokens=best.tokens)
            return
        group.slots = reassign(self.ctx, group.slots, [p for p, _ in parents])

    def _finish(
        self,
        a: _Active,
        reason: FinishReason,
        text: str,
        out: Out,
        tok: int | None = None,
        best_tokens: list[int] | None = None,
    ) -> None:
        text += a.stops.flush()
        for child in a.forks:
            if child.leader is a:
                self._detach(child)
        a.forks.clear()
        if a.leader is not None and a in a.leader.forks:
            a.leader.forks.remove(a)
        h = a.handle
        h.stop_sequence = a.stops.matched
        if h.request.keep and reason is not FinishReason.ERROR:
            h.saved = self._save(a, reason, tok, best_tokens)
        if a.sampler is not None:
            a.sampler.close()
        now = time.monotonic()
        for s in a.slots:
            s.busy = False
            s.last_used = now
        if a.beams is not None:
            # Beam slots hold hypotheses other than the answer: keep only the shared prompt.
            for s in a.slots:
                self._trim(s, a.n_prompt)
        self._active.remove(a)
        self._release(h, reason)
        out.append((h, self._chunk(a, text, () if tok is None else (tok,), reason)))

    def _save(
        self, a: _Active, reason: FinishReason, tok: int | None, best: list[int] | None
    ) -> SavedSequence | None:
        """What a later request needs to continue this one exactly (None: keep the old)."""
        if a.beams is not None and best is None:
            return None
        if best is not None:
            prompt = a.slot.tokens[: a.n_prompt]
            full = prompt + best
            return SavedSequence(
                tokens=tuple(full[:-1]),
                pending=tuple(full[-1:]),
                n_prompt=a.n_prompt,
                state=None,
                finished=reason is FinishReason.STOP,
            )
        if reason is FinishReason.CANCELLED:
            pending = a.pending + ([a.next_token] if not a.pending and a.next_token >= 0 else [])
        else:
            pending = [] if tok is None else [tok]
        return SavedSequence(
            tokens=tuple(a.slot.tokens),
            pending=tuple(pending),
            n_prompt=a.n_prompt,
            state=self.ctx.state_get(a.slot.seq) if a.slot.tokens else None,
            finished=not pending,
            exact=a.slot.exact,
        )

    def _release(self, h: RequestHandle, reason: FinishReason) -> None:
        h.finish_reason = reason
        self._done()

    def _fail_all(self, error: EdgedError) -> None:
        """End every running request with `error`; their KV is dropped since it may be torn."""
        out: Out = []
        for a in list(self._active):
            if a.sampler is not None:
                a.sampler.close()
            for s in a.slots:
                s.busy = False
                self._trim(s, 0)
            self._active.remove(a)
            self._release(a.handle, FinishReason.ERROR)
            out.append((a.handle, error))
        self._deliver(out)

    @staticmethod
    def _deliver(out: Out) -> None:
        """Hand a step's output to each event loop with one thread-safe call per loop."""
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
