"""Where drafts come from each step (n-gram lookup, a draft model) and what they earned.

The scheduler owns one `Speculator`. Before a step it asks `plan` which sequences draft
how many tokens (the cost model in `speculate` decides), lays the drafts out as extra rows,
and after the decode calls `verify` for each drafting sequence.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from daemon.engine.adapters.lora import Adapters
from daemon.engine.decode.active import Active
from daemon.engine.decode.slots import common_prefix
from daemon.engine.errors import LoadFailed
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model
from daemon.engine.speculation.speculate import (
    CostsByContext,
    NgramIndex,
    Speculation,
    StepCost,
    StepShape,
    best_draft_len,
)

log = logging.getLogger("edged.speculate")


@dataclass(frozen=True)
class SpecOptions:
    """How a model speculates: n-gram lookup, a draft model, or (both off) not at all."""

    ngram: bool = False
    draft: Model | None = None
    draft_max: int = 8
    ngram_min: int = 2
    ngram_max: int = 4
    # Draft whenever a draft exists, whatever it costs (tests and benchmarks of the
    # verification itself); the default lets the cost model decide per sequence.
    always: bool = False
    # Speculate even where verified rows are not bit-identical to plain decoding's (output
    # then equals plain decoding up to floating-point near-ties).
    inexact: bool = False

    @property
    def enabled(self) -> bool:
        return self.ngram or self.draft is not None


def check_draft_vocab(target: Model, draft: Model) -> None:
    """A draft must share the target's vocabulary token for token: refuse it otherwise."""
    if draft.n_vocab != target.n_vocab:
        raise LoadFailed(
            f"draft model {draft.path.name} has {draft.n_vocab} tokens; "
            f"{target.path.name} has {target.n_vocab}"
        )
    same = all(draft.piece(t) == target.piece(t) for t in range(target.n_vocab))
    if not same or (draft.bos, draft.eos) != (target.bos, target.eos):
        raise LoadFailed(f"draft model {draft.path.name} has a different vocabulary")


def rows_are_exact(ctx: Context, batch: Batch, n_seq: int) -> bool:
    """Whether tokens decoded as several rows of one sequence get bit-identical logits to
    the same tokens decoded one row per step (what plain decoding does). Uses sequences 0
    and 1 (or 0 twice) of a fresh context and leaves them empty.

    The rows are decoded after as long a history as a sequence may hold, up to 600 tokens:
    with flash attention, llama.cpp 0.3.36 computes a lone row over 512 or more KV cells
    (cells are counted in steps of 256) with the cells split over threads, and several rows
    without, so the two agree over a short history and not over a long one."""
    model = ctx.model
    room = ctx.n_ctx // n_seq
    tail = model.tokenize(" brown fox jumps over the lazy dog.", add_special=False)
    text = "The quick brown fox jumps over the lazy dog. "
    head = model.tokenize(text * 60 + "The quick", add_special=True)
    head = head[: max(0, min(600, room - len(tail) - 1))]
    if len(tail) < 4 or len(head) < 8:
        return False
    two = 1 if n_seq > 1 else 0

    def run(seq: int, rows: list[list[int]]) -> list[bytes]:
        ctx.seq_rm(seq)
        out: list[bytes] = []
        pos = 0
        cap = batch.capacity
        prefill = [head[i : i + cap] for i in range(0, len(head), cap)]
        for chunk, scored in [*((c, False) for c in prefill), *((r, True) for r in rows)]:
            batch.clear()
            for tok in chunk:
                batch.add(tok, pos, seq, scored)
                pos += 1
            if ctx.decode(batch) != 0:
                raise RuntimeError("llama_decode failed")
            if scored:
                out.extend(ctx.logits_np(i).tobytes() for i in range(len(chunk)))
        ctx.seq_rm(seq)
        return out

    try:
        single = run(0, [[t] for t in tail])
        several = run(two, [tail[:2], tail[2:]])
    except RuntimeError:
        return False
    return single == several


def probe_adapters(ctx: Context, batch: Batch, n_seq: int, adapters: Adapters) -> frozenset[str]:
    """The adapters under which rows are exact (`rows_are_exact` with each applied alone at
    its `--lora` scale); the context is left with no adapters applied."""
    exact = set()
    try:
        for name, spec in adapters.specs.items():
            ctx.set_adapters([(adapters.loaded[name], spec.scale or 1.0)])
            if rows_are_exact(ctx, batch, n_seq):
                exact.add(name)
            else:
                log.warning(
                    "%s: with LoRA adapter %s, verified rows are not plain decoding's; "
                    "requests naming it do not speculate",
                    ctx.model.path.name,
                    name,
                )
    finally:
        ctx.set_adapters([])
    return frozenset(exact)


# A sequence's expected per-token acceptance before its key has any history, per source.
PRIOR = {"ngram": 0.5, "draft": 0.7}


class Speculator:
    """Drafts for the sequences of one scheduler, the step-cost model and the counters."""

    def __init__(
        self,
        options: SpecOptions,
        ctx_options: ContextOptions,
        ctx: Context,
        batch: Batch,
        adapters: Adapters | None = None,
    ) -> None:
        self.options = options
        # Seconds the draft model took this step: not part of the target's step cost.
        self.draft_seconds = 0.0
        self._is_eog = ctx.model.is_eog
        self._room = ctx_options.n_ctx // max(ctx_options.n_seq_max, 1)  # cells of one sequence
        self.off_reason = ""

        # Step costs per context length class; `cost` is the one of the step being planned.
        self.costs = CostsByContext()
        self.cost = StepCost()
        # Rows per sequence of the step being planned: what `observe` files its time under.
        self.shape = StepShape()
        self.drafted: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self.disabled: Counter[str] = Counter()
        # Acceptance across one key's sequences, per source: a new sequence's prior. Per key:
        # how well drafts of one key's text verify must not shape another key's timing.
        self.prior: dict[tuple[str, str], float] = {}
        self.draft_ctx: Context | None = None
        self.draft_batch: Batch | None = None
        # Tokens whose KV the draft context holds, per sequence id (slots outlive requests).
        self._held: dict[int, list[int]] = {}
        # ... and whose request filled them: another key keeps only what it may share.
        self._held_owner: dict[int, str] = {}
        # The prompt cache's sharing rule (the scheduler sets it): tokens `owner` may reuse
        # of KV `holder` filled (None: all); by default nothing crosses a key.
        self.shareable: Callable[[str, str], int | None] = lambda h, o: None if h == o else 0
        self.usable = options.enabled
        if self.usable and (ctx.model.recurrent or ctx.model.hybrid):
            # A recurrent state holds only its last position: rejected drafts could never
            # be removed from it (llama_memory_seq_rm refuses), so nothing is verified.
            self.usable = False
            self.off_reason = "recurrent"
        if (
            self.usable
            and not options.inexact
            and not rows_are_exact(ctx, batch, ctx_options.n_seq_max)
        ):
            # llama.cpp computes a sequence's lone row with other kernels than several rows
            # of it (attention without flash attention; F16/F32/Q8_0 weights): verified rows
            # would not be what plain decoding computes, and greedy output could change.
            log.warning(
                "%s: verifying several rows gives other logits than one row at a time here; "
                "speculative decoding stays off (README: Speculative decoding)",
                ctx.model.path.name,
            )
            self.usable = False
            self.off_reason = "inexact"
        # LoRA adapters add matmuls of their own (F16 A and B: other kernels for one row
        # than for several on a CPU), so exactness without them says nothing about a request
        # that names them: each adapter is probed on its own. Which kernel runs depends on
        # the tensors' types and shapes, not on the scale, and a set applies its adapters one
        # after the other, so a set is exact when each of its adapters is.
        self.exact_adapters: frozenset[str] = frozenset()
        if self.usable and adapters is not None and adapters.names:
            self.exact_adapters = (
                frozenset(adapters.names)
                if options.inexact
                else probe_adapters(ctx, batch, ctx_options.n_seq_max, adapters)
            )
        if options.draft is not None and self.usable:
            self.draft_ctx = Context(options.draft, ctx_options)
            self.draft_batch = Batch(ctx_options.n_batch, 1)

    def attach(self, a: Active, history: list[int], media: bool = False) -> None:
        """Give a new request its speculative state (beams never draft, nor a sequence
        holding an image or audio clip: its positions have no token ids to look up, and a
        draft model never saw it)."""
        if not self.options.enabled:
            return
        if not self.usable:
            self.disabled[self.off_reason] += 1
            return
        if a.beams is not None:
            self.disabled["beams"] += 1
            return
        if media:
            self.disabled["media"] += 1
            return
        if any(name not in self.exact_adapters for name, _ in a.handle.request.lora):
            self.disabled["inexact"] += 1  # rows under this adapter set are not exact here
            return
        o = self.options
        index = NgramIndex(o.ngram_min, o.ngram_max)
        index.extend(history)
        a.spec = Speculation("draft" if self.draft_ctx is not None else "ngram", index)

    def plan(self, actives: list[Active], seqs: list[int], budget: int) -> int:
        """Choose each decoding sequence's draft for this step; returns the rows they take.

        `seqs`: the sequence of each plain row of the step; `budget`: rows left in the batch.
        A step that prefills a prompt drafts nothing: prompts go first.
        """
        self.draft_seconds = 0.0
        if not self.usable:
            return 0
        shape = self.shape = StepShape.plain(seqs)
        if any(a.pending for a in actives):
            return 0
        # The step's time is filed (and its drafts judged) under its longest sequence's class.
        self.cost = self.costs.at(max((len(a.slot.tokens) for a in actives), default=0))
        used = 0
        room = self._room
        wanting: list[tuple[Active, int]] = []
        for a in actives:
            sp = a.spec
            if sp is None or a.fork.leader is not None:
                continue
            sp.draft = []
            req = a.handle.request
            seq = a.slot.seq
            # Never past max_tokens (the plain row already yields one), nor past the context.
            cap = min(
                self.options.draft_max,
                req.max_tokens - a.decode.generated - 1,
                room - len(a.slot.tokens) - 1,
                budget - used,
            )
            if cap <= 0:
                continue
            prior = self.prior.get((a.owner, sp.source), PRIOR[sp.source])
            was = sp.enabled
            if sp.source == "ngram":
                cand = sp.index.draft(cap)
                k = (
                    len(cand)
                    if self.options.always
                    else sp.choose(len(cand), cap, shape, seq, self.cost, prior)
                )
                sp.draft = cand[:k]
                shape.add(seq, len(sp.draft))
            elif self.options.always:
                wanting.append((a, cap))
                shape.add(seq, cap)
            else:
                per = self.cost.draft_round
                if per is None:  # never measured: probe the draft model with two tokens
                    k = sp.choose(min(cap, 2), cap, shape, seq, self.cost, prior)
                elif best_draft_len(0.999, cap, shape, seq, self.cost, per) == 0:
                    # Not even perfect drafts would pay at these costs: no probe either (a
                    # probe re-feeds the draft everything generated since the last one).
                    k = 0
                else:
                    k = sp.choose(cap, cap, shape, seq, self.cost, prior, per)
                if k:
                    wanting.append((a, k))
                    shape.add(seq, k)
            if was and not sp.enabled:
                self.disabled["cost"] += 1
            used += len(sp.draft)
        if wanting:
            used += self._draft_model(wanting)
            for a, k in wanting:  # a draft that ended early (end of generation) is shorter
                assert a.spec is not None
                shape.add(a.slot.seq, len(a.spec.draft) - k)
        return used

    def observe(self, seconds: float) -> None:
        """File the time of a decode-only step under the shape `plan` gave it (nothing to
        learn, and no work on the per-token path, where speculation is off)."""
        if self.usable:
            self.cost.observe(self.shape.rows, seconds, self.shape.passes)

    def _draft_model(self, wanting: list[tuple[Active, int]]) -> int:
        """Greedy drafts from the draft model, batched across sequences, in rounds."""
        ctx, b = self.draft_ctx, self.draft_batch
        assert ctx is not None and b is not None
        t0 = time.perf_counter()
        # Catch up: each sequence's draft KV must hold its history (prompt, output, and the
        # token about to be decoded); what differs from what it holds is fed again.
        want: dict[int, list[int]] = {}
        for a, _ in wanting:
            seq = a.slot.seq
            hist = [*a.slot.tokens, a.decode.next_token]
            held = self._held.setdefault(seq, [])
            keep = min(common_prefix(held, hist), len(hist) - 1)
            cap = self.shareable(self._held_owner.get(seq, a.owner), a.owner)
            if cap is not None:
                keep = min(keep, cap)
            self._held_owner[seq] = a.owner
            if keep < len(held):
                ctx.seq_rm(seq, keep, -1)
                del held[keep:]
            want[seq] = hist[keep:]
        # All but each sequence's last token first (no logits), then the last tokens together:
        # their logits must all come from the same, final decode.
        last_tok = {seq: toks.pop() for seq, toks in want.items()}
        while any(want.values()):
            b.clear()
            for seq, toks in want.items():
                n = min(len(toks), b.capacity - b.n_tokens)
                held = self._held[seq]
                for tok in toks[:n]:
                    b.add(tok, len(held), seq, False)
                    held.append(tok)
                del toks[:n]
            if ctx.decode(b) != 0:
                return self._draft_failed(wanting)
        b.clear()
        last: dict[int, int] = {}
        for seq, tok in last_tok.items():
            last[seq] = b.add(tok, len(self._held[seq]), seq, True)
            self._held[seq].append(tok)
        if ctx.decode(b) != 0:
            return self._draft_failed(wanting)
        drafts = {a.slot.seq: [] for a, _ in wanting}
        rounds = max(k for _, k in wanting)
        for _ in range(rounds):
            b.clear()
            for a, k in wanting:
                seq = a.slot.seq
                d = drafts[seq]
                if len(d) >= k or (d and ctx.model.is_eog(d[-1])):
                    continue  # done: its last row's logits are gone with the batch
                tok = int(ctx.logits_np(last[seq]).argmax())
                d.append(tok)
                if len(d) < k and not ctx.model.is_eog(tok):
                    held = self._held[seq]
                    last[seq] = b.add(tok, len(held), seq, True)
                    held.append(tok)
            if b.n_tokens == 0:
                break
            if ctx.decode(b) != 0:
                return self._draft_failed(wanting)
        used = 0
        for a, k in wanting:
            assert a.spec is not None
            d = drafts[a.slot.seq][:k]
            # An end-of-generation draft is the last one worth verifying.
            for i, tok in enumerate(d):
                if ctx.model.is_eog(tok):
                    d = d[: i + 1]
                    break
            a.spec.draft = d
            used += len(d)
        self.draft_seconds = time.perf_counter() - t0
        self.cost.observe_draft(self.draft_seconds / max(rounds, 1))
        return used

    def _draft_failed(self, wanting: list[tuple[Active, int]]) -> int:
        """The draft context refused a batch (no KV room): forget its state, draft nothing."""
        assert self.draft_ctx is not None
        for a, _ in wanting:
            self.draft_ctx.seq_rm(a.slot.seq)
            self._held.pop(a.slot.seq, None)
        self.disabled["draft_failed"] += 1
        return 0

    def add_rows(self, a: Active, b: Batch) -> None:
        """Lay out `a`'s drafts after its plain row (`a.row`, just added) in the batch."""
        sp = a.spec
        assert sp is not None
        sp.rows = [a.row]
        for tok in sp.draft:
            sp.rows.append(b.add(tok, len(a.slot.tokens), a.slot.seq, True))
            a.slot.tokens.append(tok)

    def verify(self, a: Active, sample: Callable[[int], int]) -> tuple[list[int], list[int], int]:
        """Sample the verify rows in order: the tokens to emit (accepted drafts + one), their
        rows, and the position of the plain row; the step's draft is cleared."""
        sp = a.spec
        assert sp is not None
        pos0 = len(a.slot.tokens) - len(sp.draft) - 1
        is_eog = self._is_eog
        toks: list[int] = []
        for j, row in enumerate(sp.rows):
            tok = sample(row)
            toks.append(tok)
            if j == len(sp.draft) or tok != sp.draft[j] or is_eog(tok):
                break
        m = len(toks) - 1
        k = len(sp.draft)
        sp.acceptance.update(m, k)
        self.drafted[sp.source] += k
        self.accepted[sp.source] += m
        # The acceptance of the key's sequences so far, per source: what its newcomer expects.
        rate = m / k if m < k else 1.0
        key = (a.owner, sp.source)
        self.prior[key] = 0.9 * self.prior.get(key, PRIOR[sp.source]) + 0.1 * rate
        rows = sp.rows
        sp.draft, sp.rows = [], []
        return toks, rows, pos0

    def close(self) -> None:
        if self.draft_batch is not None:
            self.draft_batch.close()
        if self.draft_ctx is not None:
            self.draft_ctx.close()
