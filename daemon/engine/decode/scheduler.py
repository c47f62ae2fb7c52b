"""Continuous batching: one thread per model owns the context and decodes every sequence at once.

Each step fills ONE llama_batch with the next token of every decoding sequence plus
prompt chunks of newly admitted ones (chunked prefill), calls llama_decode once, then
samples every sequence that produced logits with its own sampler chain (or advances its
beam search).
"""

from __future__ import annotations

import asyncio
import logging
import time

from daemon.engine.adapters.lora import Adapters, AdapterSteps
from daemon.engine.caches.memory import Memory
from daemon.engine.caches.prompt_cache import PromptCache
from daemon.engine.caches.slot_kv import SlotKV
from daemon.engine.decode.active import Active, FairQueue
from daemon.engine.decode.admission import Admission
from daemon.engine.decode.beam import log_softmax, repetition_penalize
from daemon.engine.decode.completion import failure
from daemon.engine.decode.logprobs import token_logprob
from daemon.engine.decode.slots import Slot, chunk_size, reassign
from daemon.engine.errors import GenerationFailed
from daemon.engine.handle import Out, RequestHandle, deliver
from daemon.engine.media import is_stand_in
from daemon.engine.native.llama import ContextOptions, Model
from daemon.engine.native.mtmd import decode_rows
from daemon.engine.speculation.drafting import SpecOptions, Speculator
from daemon.engine.types import FinishReason, GenerationRequest

log = logging.getLogger("edged.scheduler")


class Scheduler(Admission):
    """Owns one llama_context; requests enter through `submit`, chunks leave via their handle.

    Admission (`admission.py`) gives waiting requests slots, completion (`completion.py`)
    ends them; here is the step: one batch, one llama_decode, every sequence sampled.
    """

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
        self.memory = Memory.of(model.n_swa, model.recurrent, model.hybrid)
        self.kv = SlotKV(self.ctx, self.cache, self.memory)
        self.spec.shareable = self.cache.shareable  # the draft context's KV: the same rule
        self._slots = [Slot(seq=i) for i in range(self.n_slots)]
        self._waiting = FairQueue(max_per_owner)
        self._active = []
        self.cache_hit_tokens = 0
        self.prefill_tokens = 0
        # Set by `retire` (a lost RPC worker): stop at the next chance, touch no llama.cpp.
        self._retired = None
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
                child.slot.jumps = leader.slot.jumps
                child.slot.exact = leader.slot.exact
                child.fork.leader = None
                child.scoring.logprobs = list(leader.scoring.logprobs)
                assert child.decode.sampler is not None
                tok = child.decode.sampler.sample(self.ctx, leader.row)
                self._on_token(child, tok, out, leader.row)
            except Exception as exc:  # one sibling's sampling failed: that sibling alone
                log.exception("a forked choice failed")
                self._finish(child, FinishReason.ERROR, "", out, error=failure(exc))
        leader.fork.children.clear()

    def _step(self) -> None:
        b = self.batch
        b.clear()
        # One adapter set per llama_decode (llama.cpp applies them per context).
        lora = self.lora.serve(self.ctx, (a.handle.request.lora for a in self._active))
        group = [a for a in self._active if a.handle.request.lora == lora]
        self._decode_media(group)
        if self._retired is not None:  # retired meanwhile: its KV lives on a lost worker
            return
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
            # Text up to the next image; an image's rows go through _decode_media.
            n = chunk_size(_text_run(a.pending), budget)
            if n:
                chunks[id(a)] = n
                rows.append((a.slot.seq, a, -1))
                budget -= n
        rows.sort(key=lambda r: r[0])
        for seq, a, i in rows:
            if a.beams is not None and not a.pending:
                slot = a.beams.slots[i]
                token = a.beams.search.beams[i].tokens[-1]
                a.beams.rows[i] = b.add(token, slot.pos(len(slot.tokens)), seq, True)
                slot.tokens.append(token)
            elif not a.pending:
                a.row = b.add(a.decode.next_token, a.slot.pos(len(a.slot.tokens)), seq, True)
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
            if id(a) in chunks and not a.pending:  # its prompt is in: a recurrent state
                self.kv.checkpoint(a.slot)  # cannot be cut back to here later
            if id(a) in chunks and a.handle.request.progress:
                out.append((a.handle, a.progress()))
            try:
                self._after_decode(a, out)
            except Exception as exc:  # sampling, grammar, scoring, text: this request alone
                log.exception("a sequence failed after decode")
                if a in self._active:
                    self._finish(a, FinishReason.ERROR, "", out, error=failure(exc))
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

    def _decode_media(self, group: list[Active]) -> None:
        """Decode the embeddings of one image whose turn it is (a request whose next prompt
        position is an image), in a llama_decode of its own: a batch holds tokens or
        embeddings, never both. One image per step, at most a batch of its rows: text
        streams wait no longer than for a prefill chunk."""
        for a in group:
            if not a.pending or not is_stand_in(a.pending[0]) or a.fork.leader is not None:
                continue
            slot = a.slot
            pos = len(slot.tokens)
            try:
                media = a.handle.request.media
                assert media is not None, "stand-ins in a prompt without media"
                span = media.span_at(pos)
                lo = pos - span.start
                rows = span.embd[lo:]
                if not span.non_causal:  # at most a batch per step (a bidirectional image
                    rows = rows[: self.batch.capacity]  # is attended whole: one decode)
                p0 = slot.pos(span.start)
                placed = span.placement
                jump = span.jump()
                if lo == 0 and jump is not None:  # before its rows: a failure cuts it whole
                    slot.jumps = (*slot.jumps, jump)
                self.decode_started = time.monotonic()  # the watchdog's liveness marks
                try:
                    decode_rows(
                        self.ctx,
                        rows,
                        p0 + lo,
                        slot.seq,
                        self.batch.capacity,
                        non_causal=span.non_causal,
                        positions=None if placed is None else placed.at(p0, lo, lo + len(rows)),
                    )
                finally:
                    self.decode_started = None
                    self.last_beat = time.monotonic()
            except Exception as exc:  # this request alone; its partial KV goes
                if self._retired is not None:
                    return
                log.exception("decoding image embeddings failed")
                self.kv.cut(slot, pos)
                out: Out = []
                self._finish(a, FinishReason.ERROR, "", out, error=failure(exc))
                deliver(out)
                return
            n = len(rows)
            if n > 1 and slot.exact == pos:  # one multi-row chunk, as in a fresh prefill
                slot.exact = pos + n
            slot.tokens.extend(a.pending[:n])
            del a.pending[:n]
            self.prefill_tokens += n
            if a.handle.request.progress:
                deliver([(a.handle, a.progress())])
            return

    def _add_chunk(self, a: Active, n: int) -> None:
        """Put the next `n` prompt tokens of `a` into the batch."""
        b = self.batch
        take = a.pending[:n]
        done = n == len(a.pending)
        slot = a.slot
        pos = len(slot.tokens)
        at = slot.pos(pos)  # text runs one position a token
        score = a.handle.request.prompt_logprobs
        for j, tok in enumerate(take):
            row = b.add(tok, at + j, slot.seq, score or (done and j == n - 1))
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
        # Taken before anything else, so no row's probabilities outlive its token.
        shown = d.sampler.take(row) if d.sampler is not None else None
        if self.model.is_eog(tok):
            d.next_token = -1
            self._finish(a, FinishReason.STOP, d.stops.push(d.detok.flush()), out)
            return
        if shown is not None:
            d.logprobs.append(shown)
        elif h.request.logprobs is not None:
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


def _text_run(pending: list[int]) -> int:
    """Leading tokens of `pending` before its first image position."""
    for i, tok in enumerate(pending):
        if is_stand_in(tok):
            return i
    return len(pending)
