"""Sequence slots and the small rules of filling them: prefixes, chunks, seeds."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.engine.errors import GenerationFailed
from daemon.engine.positions import Jumps, position

if TYPE_CHECKING:
    from daemon.engine.native.llama import Context

_SEED_MASK = 0xFFFFFFFF


def seed32(seed: int | None) -> int:
    """Map any non-negative seed onto llama.cpp's uint32 (whose all-ones value means random)."""
    if seed is None:
        return random.getrandbits(31)
    s = seed & _SEED_MASK
    return s - 1 if s == _SEED_MASK else s


def chunk_size(pending: int, budget: int) -> int:
    """Prompt tokens to decode this step: never a lone token out of a longer prompt."""
    if pending == 1:
        return 1 if budget >= 1 else 0
    n = min(pending, budget)
    if pending - n == 1:
        n -= 1
    return n if n >= 2 else 0


def common_prefix(a: Sequence[int], b: Sequence[int], start: int = 0) -> int:
    """Length of the common prefix of `a` and `b`, whose first `start` items are known equal."""
    n = min(len(a), len(b))
    i = min(start, n)
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class Slot:
    """A sequence id and the tokens its KV cells hold, kept after a request for prefix reuse."""

    seq: int
    tokens: list[int] = field(default_factory=list)
    # Leading tokens whose KV came from multi-token prefill chunks. llama.cpp computes
    # attention differently for a lone token, so only these match what a fresh prefill
    # of the same tokens would produce, and only these are reused for another prompt.
    exact: int = 0
    # The API key whose requests filled it: another key reuses only what may be shared.
    owner: str = ""
    busy: bool = False
    last_used: float = 0.0
    # The LoRA adapter set its KV was computed under: a prefix is shared only within a set.
    lora: tuple[tuple[str, float], ...] = ()
    # Its M-RoPE images, where a cell's position is not its index (positions.py).
    jumps: Jumps = ()

    def pos(self, index: int) -> int:
        """The position of cell `index` (its index unless an M-RoPE image came before)."""
        return position(self.jumps, index) if self.jumps else index


def pick_slots(
    slots: list[Slot],
    n: int,
    want: list[int],
    lora: tuple[tuple[str, float], ...] = (),
    owner: str = "",
    shareable: Callable[[str, str], int | None] | None = None,
) -> list[Slot]:
    """`n` free slots (indexed by sequence id) for a request of `owner` whose prompt is
    `want` under the adapter set `lora`: the one sharing the longest prefix with it first
    (KV made under other adapters is no prefix of ours; another key's counts only up to
    `shareable(holder, owner)` tokens, None: all, so which slot is taken says nothing of
    another key's text); among equals, one next to a busy (or already picked) slot, then
    the least recently used.

    Busy slots kept in runs of consecutive sequence ids are worth it: with one KV stream per
    sequence, llama.cpp splits a batch into one micro-batch per run (a decode step at 4
    streams on sequences 0, 2, 4, 6 costs 1.34x the step on 0-3, bench/RESULTS.md).
    """

    def usable(s: Slot) -> int:
        if s.lora != lora:
            return 0
        cap = None if shareable is None else shareable(s.owner, owner)
        shared = common_prefix(s.tokens, want)
        return shared if cap is None else min(shared, cap)

    prefix = {s.seq: usable(s) for s in slots if not s.busy}
    taken: set[int] = set()

    def held(j: int) -> bool:
        return 0 <= j < len(slots) and (slots[j].busy or j in taken)

    picked: list[Slot] = []
    for _ in range(n):
        free = [s for s in slots if not s.busy and s.seq not in taken]
        best = max(
            free,
            key=lambda s: (prefix[s.seq], held(s.seq - 1) + held(s.seq + 1), -s.last_used),
        )
        taken.add(best.seq)
        picked.append(best)
    return picked


def reassign(ctx: Context, slots: list[Slot], parents: list[int]) -> list[Slot]:
    """Beam slots after a step: beam i gets the KV of beam `parents[i]`. A parent's first
    child keeps its slot; further children get a spare slot holding a copy of its state."""
    new: list[Slot | None] = [None] * len(parents)
    taken: set[int] = set()
    for i, p in enumerate(parents):
        if p not in taken:
            taken.add(p)
            new[i] = slots[p]
    spare = [s for j, s in enumerate(slots) if j not in taken]
    for i, p in enumerate(parents):
        if new[i] is not None:
            continue
        src, dst = slots[p], spare.pop()
        dst.tokens = list(src.tokens)
        dst.jumps = src.jumps
        dst.exact = src.exact
        dst.lora = src.lora
        ctx.seq_rm(dst.seq)
        if not ctx.state_set(dst.seq, ctx.state_get(src.seq)):
            raise GenerationFailed("could not copy a beam's KV state")
        new[i] = dst
    return [s for s in new if s is not None] + spare
