"""Admission: new requests from the inbox into the waiting line, and from it into slots.

Free slots go to waiting requests one owner after the other; a request starts with its
sampler or beam search, its slots' KV reused, restored or cleared, and its `n` choices
admitted together so their prompt is decoded once.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter

from daemon.engine.caches.keep import beam_search
from daemon.engine.decode.active import Active, Beams, Decode
from daemon.engine.decode.completion import Completion, failure
from daemon.engine.decode.detokenize import IncrementalDetokenizer
from daemon.engine.decode.slots import Slot, pick_slots, seed32
from daemon.engine.decode.stops import StopMatcher
from daemon.engine.decode.worker import STOP
from daemon.engine.errors import EngineError, InvalidInput, ModelChanged
from daemon.engine.handle import Out, RequestHandle, deliver
from daemon.engine.media import is_stand_in
from daemon.engine.native.sampler import SamplerChain
from daemon.engine.types import Chunk, FinishReason, GenerationRequest

log = logging.getLogger("edged.scheduler")


class Admission(Completion):
    """The waiting line's side of the scheduler thread: who gets a slot next, and how it starts."""

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
                if isinstance(exc, EngineError):  # a refusal in the engine's words
                    log.info("a request was refused at admission: %s", exc)
                else:
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
            self._finish(a, FinishReason.ERROR, "", out, error=failure(exc))
            return
        if h in self._waiting:
            self._waiting.remove(h)
        if h.finish_reason is None:
            self._release(h, FinishReason.ERROR)
            out.append((h, failure(exc)))

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
        resume = req.resume
        media = req.media is not None or (
            resume is not None and any(is_stand_in(t) for t in resume.tokens)
        )
        if media and (req.beams is not None or req.prompt_logprobs):
            # Beams penalize and prompt scores read prompt token ids: media positions have
            # none.
            raise InvalidInput(
                "a prompt with images or audio cannot use beam search or prompt log-probabilities",
                subject="image",
            )
        # Sampler and search first: if they refuse the request, no slot was touched yet.
        sampler = None
        beams = None
        if req.beams is not None:
            beams = Beams(beam_search(req, self.model.eog_tokens), slots)
        else:
            shown = req.logprobs if req.post_sampling else None
            sampler = SamplerChain(self.model, req.sampling, seed32(req.sampling.seed), shown)
        carry = req.resume.tail if req.resume is not None else b""
        detok = IncrementalDetokenizer(self.model.piece, carry, self.model.special_piece)
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
        if media:  # penalties know token ids only: media positions are left out
            history = [t for t in history if not is_stand_in(t)]
        if sampler is not None:
            sampler.prime(history[-req.sampling.penalty_last_n :])
        self.spec.attach(active, history, media)
        if fork_of is not None:
            active.fork.leader = fork_of
            if fork_of not in self._active:  # the leader already ended: prefill on our own
                self._detach(active)
            return active
        if req.max_tokens == 0 and not req.prompt_logprobs:
            self._finish(active, FinishReason.LENGTH, "", out)
            return None
        if req.progress:  # the first report: what the slot and the prompt cache gave
            out.append((h, active.progress()))
        return active
