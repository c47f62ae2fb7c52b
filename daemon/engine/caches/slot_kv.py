"""What each slot's KV holds: trimming, prefix reuse, the prompt cache below, kept sequences.

The scheduler thread alone calls these. A slot's `tokens` mirror its KV cells exactly and
`exact` counts the leading tokens whose KV came from multi-token chunks: under --exact only
those are reused or cached (only they give a later request the same logits as a fresh
prefill). Without it every token is, generated ones included, as llama-server reuses them.

Which prefixes can be kept at all is the model's memory's rule (caches/memory.py): a sliding
window must still hold the cells behind the cut, a recurrent state is kept whole or not at
all. `reusable` applies both rules; every cut (`trim`) goes through it.
"""

from __future__ import annotations

import logging

from daemon.engine.caches.memory import Memory
from daemon.engine.caches.prompt_cache import BLOCK, PromptCache
from daemon.engine.decode.slots import Slot, common_prefix
from daemon.engine.errors import ModelUnavailable
from daemon.engine.media import is_stand_in
from daemon.engine.native.llama import Context
from daemon.engine.positions import before, whole
from daemon.engine.types import SavedSequence

log = logging.getLogger("edged.scheduler")


class SlotKV:
    """Keeps slots' KV and their token mirrors in step, with the prompt cache behind them."""

    def __init__(self, ctx: Context, cache: PromptCache, memory: Memory | None = None) -> None:
        self.ctx = ctx
        self.cache = cache
        self.memory = memory or Memory()

    def reusable(self, slot: Slot, upto: int | None = None) -> int:
        """Leading tokens of `slot` (at most `upto`) whose KV a later request may reuse or the
        cache keep: 0 where the memory cannot be cut back there."""
        keep = slot.exact if self.cache.exact else len(slot.tokens)
        if upto is not None:
            keep = min(keep, upto)
        if keep < len(slot.tokens):  # cut there: never into an image (see trim)
            keep = whole(slot.jumps, keep)
        return keep if self.resumable(slot, keep) else 0

    def resumable(self, slot: Slot, keep: int) -> bool:
        """Whether the memory of `slot` can be cut back to its first `keep` tokens."""
        if self.memory.kind == "kv" or keep <= 0 or keep > len(slot.tokens):
            return keep <= len(slot.tokens)
        return self.memory.resumes(keep, self.ctx.seq_pos_min(slot.seq))

    def margin(self) -> int:
        """Prompt tokens decoded again however much is cached: the last one yields logits;
        under --exact two, so that they form a multi-token chunk as in a fresh prefill."""
        return 2 if self.cache.exact else 1

    def fits(self, held: int, keep: int) -> bool:
        """Whether a saved state of `held` tokens, once restored, can be cut back to `keep`."""
        return self.memory.resumes(keep, self.memory.restored_pos_min(held))

    def trim(self, slot: Slot, keep: int) -> int:
        """Drop everything after the first `keep` tokens of `slot` (and an M-RoPE image
        they would cut: its cells share one position); everything where its memory cannot
        be cut back there (a recurrent state, a window already slid). Returns what is kept."""
        if keep < len(slot.tokens):
            # An image's cells share one position, and llama.cpp cuts by position: an image
            # goes whole. (A slot that ends inside one keeps it: its rows go on from there.)
            keep = whole(slot.jumps, keep)
            at = slot.pos(keep)
            if not self.resumable(slot, keep) or not self.ctx.seq_rm(slot.seq, at, -1):
                self.ctx.seq_rm(slot.seq)
                keep = 0
            del slot.tokens[keep:]
            slot.jumps = before(slot.jumps, keep)
        keep = min(keep, len(slot.tokens))
        slot.exact = min(slot.exact, keep)
        return keep

    def cut(self, slot: Slot, index: int) -> None:
        """Remove the cells of `slot` from `index` on, those its tokens do not list yet
        included (a decode that failed part way), and an image they would cut."""
        keep = whole(slot.jumps, index)
        self.ctx.seq_rm(slot.seq, slot.pos(keep), -1)
        del slot.tokens[keep:]
        slot.jumps = before(slot.jumps, keep)
        slot.exact = min(slot.exact, keep)

    def clear(self, slot: Slot) -> None:
        """Empty `slot`, keeping what it held exactly in the prompt cache."""
        self.vacate(slot, 0)
        self.trim(slot, 0)

    def reuse_prefix(self, slot: Slot, prompt: list[int], owner: str) -> list[int]:
        """Keep the slot's KV for the shared prefix, or restore a longer one from the prompt
        cache; return the prompt tokens still to decode."""
        keep = self.usable(slot, prompt, owner)
        self.vacate(slot, keep)
        if keep < len(prompt) - self.margin() - BLOCK:
            keep = self.recall(slot, prompt, owner, keep)
        keep = self.trim(slot, keep)
        return list(prompt[keep:])

    def usable(self, slot: Slot, prompt: list[int], owner: str) -> int:
        """Leading prompt tokens whose KV in `slot` a request of `owner` may keep."""
        keep = min(common_prefix(slot.tokens, prompt), len(prompt) - self.margin())
        cap = self.cache.shareable(slot.owner, owner)
        return max(0, self.reusable(slot, keep if cap is None else min(keep, cap)))

    def vacate(self, slot: Slot, keep: int) -> None:
        """`slot` is refilled keeping `keep` tokens: what else it holds exactly goes to the
        prompt cache first (what `reusable` allows, as for slot reuse)."""
        held = self.reusable(slot)
        if not self.cache.enabled or held <= keep or held < BLOCK:
            return
        self.trim(slot, held)
        self._save(slot, "a slot")  # the request goes on without it if it fails

    def checkpoint(self, slot: Slot) -> None:
        """A prompt was just decoded into `slot`: where its memory cannot be cut back later
        (a recurrent state), keep this point in the prompt cache now, as llama-server keeps
        context checkpoints, so that a returning conversation or an edited last message
        resumes from it instead of prefilling everything again."""
        if self.memory.rolls_back or not self.cache.enabled:
            return
        held = self.reusable(slot)
        if held < BLOCK or held != len(slot.tokens):
            return
        self._save(slot, "a checkpoint")

    def _save(self, slot: Slot, what: str) -> None:
        """Keep all that `slot` holds in the prompt cache; a failure is logged, not raised:
        the request goes on without it."""
        try:
            self.cache.save(
                slot.owner,
                slot.tokens,
                lambda: self.ctx.state_get(slot.seq),
                slot.lora,
                self.fits,
                slot.jumps,
            )
        except Exception:
            log.exception("saving %s to the prompt cache failed", what)

    def recall(self, slot: Slot, prompt: list[int], owner: str, keep: int) -> int:
        """Restore the longest cached prefix of `prompt` into `slot` when it beats the `keep`
        tokens the slot already offers; returns the tokens to keep."""
        room = len(prompt) - self.margin()
        hit = self.cache.lookup(  # slot.lora: the request's set
            owner, prompt, slot.lora, lambda held, shared: self.fits(held, min(shared, room))
        )
        if hit is None:
            return keep
        n = min(hit.tokens, room)
        if n < len(hit.entry.tokens):  # cut there: never into an image (see trim)
            n = whole(hit.entry.jumps, n)
        if n <= keep:
            return keep
        state = self.cache.load(hit)
        if state is None:
            self.cache.count_miss()
            return keep
        self.trim(slot, 0)
        if not self.ctx.state_set(slot.seq, state):
            self.ctx.seq_rm(slot.seq)
            self.cache.count_miss()
            return 0
        slot.tokens = list(hit.entry.tokens)
        slot.jumps = hit.entry.jumps
        slot.exact = len(slot.tokens)
        if not self.resumable(slot, n):  # not what restored_pos_min expected: keep nothing
            self.trim(slot, 0)
            self.cache.count_miss()
            return 0
        self.cache.count_hit(n)
        return n

    def restore(self, slot: Slot, saved: SavedSequence, owner: str) -> list[int]:
        """Put a kept sequence of `owner` back into `slot`; return the tokens still to feed.

        What the slot already holds counts only within the sharing rule: another key's KV
        of the same tokens is never kept beyond the shared prefix (a guessed prompt would
        otherwise be confirmed by the tokens it saves, e.g. a beam entry without state).
        """
        target = list(saved.tokens)
        keep = common_prefix(slot.tokens, target)
        cap = self.cache.shareable(slot.owner, owner)
        if cap is not None:
            keep = min(keep, cap, self.reusable(slot))
        if not self.resumable(slot, keep):
            keep = 0
        if keep < len(target) and saved.state is not None:
            self.clear(slot)
            if self.ctx.state_set(slot.seq, saved.state):
                slot.tokens = target
                slot.jumps = saved.jumps
                slot.exact = saved.exact
                return list(saved.pending)
            self.ctx.seq_rm(slot.seq)
            keep = 0
        if any(is_stand_in(t) for t in target[keep:]):
            # Media positions only the kept state holds: their embeddings are not kept.
            raise ModelUnavailable(
                "the kept state of this request_id could not be restored now (KV memory "
                "is short); retry",
                subject="request_id",
                retry_after=1,
            )
        self.vacate(slot, keep)
        keep = self.trim(slot, keep)
        return target[keep:] + list(saved.pending)
