"""Speculative decoding on the real SmolLM2: the same output as plain decoding, faster or not.

Two engines on the same GGUF: one plain, one drafting by n-gram lookup on every step where
a draft exists (`always`, so the verification path runs whatever the cost model would say).
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import (
    BeamParams,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    TokenLogprob,
)

GREEDY = SamplingParams(temperature=0.0)
# Flash attention, over at most 256 KV cells per sequence: there the kernel computes one row
# and a few rows of a sequence alike (over 512 cells or more a lone row takes another path).
OPTS = EngineOptions(ctx_size=256, parallel=4, max_queue=64, flash_attn=True)
# Repetitive text (quoting, code, lists) gives n-gram drafts; the model's own loops too.
PROMPTS = [
    "Repeat exactly: the cat sat on the mat and the dog sat on the log. "
    "Repeat exactly: the cat sat on the mat and the dog",
    "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n\n\ndef mul(a, b):\n",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,",
]


@dataclass
class Out:
    text: str
    tokens: list[int]
    reason: FinishReason
    logprobs: list[tuple[int, float]]
    handle: RequestHandle


@pytest.fixture(scope="module")
def engines(model_path: Path) -> Iterator[tuple[LoadedModel, LoadedModel]]:
    off = LoadedModel("off", model_path, OPTS)
    on = LoadedModel("on", model_path, replace(OPTS, speculate=True, speculate_always=True))
    yield off, on
    on.close()
    off.close()


async def collect(h: RequestHandle) -> Out:
    text, tokens, lps, reason = [], [], [], None
    async for c in h.chunks():
        text.append(c.text)
        tokens.extend(c.token_ids)
        lps.extend((lp.token, lp.logprob) for lp in c.logprobs)
        reason = c.finish_reason
    assert reason is not None
    return Out("".join(text), tokens, reason, lps, h)


def run(lm: LoadedModel, *reqs: GenerationRequest) -> list[Out]:
    async def main() -> list[Out]:
        return list(await asyncio.gather(*(collect(lm.submit(r)) for r in reqs)))

    return asyncio.run(main())


def counts(lm: LoadedModel) -> tuple[int, int]:
    spec = lm.generator().spec
    return sum(spec.drafted.values()), sum(spec.accepted.values())


def test_greedy_output_is_identical(engines: tuple[LoadedModel, LoadedModel]) -> None:
    off, on = engines
    d0, a0 = counts(on)
    for prompt in PROMPTS:
        req = GenerationRequest(off.tokenize(prompt), 24, GREEDY, logprobs=2)
        want, got = run(off, req)[0], run(on, req)[0]
        assert got.tokens == want.tokens, prompt
        assert got.text == want.text
        assert got.reason == want.reason
        # Log-probabilities are the target's, whichever row produced them.
        assert [t for t, _ in got.logprobs] == [t for t, _ in want.logprobs]
        for (_, lp_got), (_, lp_want) in zip(got.logprobs, want.logprobs, strict=True):
            assert lp_got == pytest.approx(lp_want, abs=1e-3)
    drafted, accepted = counts(on)
    assert drafted > d0 and accepted > a0  # the verify path really ran, and kept drafts
    assert counts(off) == (0, 0)


def test_greedy_batched_with_non_speculating_neighbours(
    engines: tuple[LoadedModel, LoadedModel],
) -> None:
    off, on = engines
    reqs = [
        GenerationRequest(off.tokenize(PROMPTS[0]), 16, GREEDY),
        GenerationRequest(off.tokenize(PROMPTS[2]), 16, GREEDY),
        # Beams never draft; they share the steps of the drafting sequences.
        GenerationRequest(off.tokenize("The sea is"), 6, GREEDY, beams=BeamParams(2)),
    ]
    alone = [run(off, r)[0].tokens for r in reqs]
    together = run(on, *reqs)
    assert [o.tokens for o in together] == alone
    assert on.generator().spec.disabled["beams"] >= 1


def test_seeded_sampling_draws_the_same_tokens(engines: tuple[LoadedModel, LoadedModel]) -> None:
    """Each row is sampled by the request's own chain in plain decoding's order, so a seed
    gives the same text; penalties, logit_bias, top-k/p and temperature all included."""
    off, on = engines
    prompt = off.tokenize(PROMPTS[1])
    for seed in range(2):
        sp = SamplingParams(
            temperature=0.7,
            top_k=40,
            top_p=0.95,
            repetition_penalty=1.05,
            logit_bias=((28, -2.0),),
            seed=seed,
        )
        req = GenerationRequest(prompt, 16, sp)
        assert run(on, req)[0].tokens == run(off, req)[0].tokens, seed


def test_post_sampling_candidates_are_each_rows_own(
    engines: tuple[LoadedModel, LoadedModel],
) -> None:
    """`post_sampling_probs` while drafts verify: every token, kept draft or correction,
    reports the candidates of its own verified row, as plain decoding reports them."""
    off, on = engines
    prompt = off.tokenize(PROMPTS[0])

    def shown(lm: LoadedModel, req: GenerationRequest) -> list[TokenLogprob]:
        async def main() -> list[TokenLogprob]:
            return [lp async for c in lm.submit(req).chunks() for lp in c.logprobs]

        return asyncio.run(main())

    d0, a0 = counts(on)
    for sp in (GREEDY, SamplingParams(temperature=0.8, top_k=5, seed=3)):
        req = GenerationRequest(prompt, 20, sp, logprobs=3, post_sampling=True)
        want, got = shown(off, req), shown(on, req)
        assert [lp.token for lp in got] == [lp.token for lp in want], sp
        for g, w in zip(got, want, strict=True):
            assert g.logprob == pytest.approx(w.logprob, abs=1e-4)
            assert [t for t, _ in g.top] == [t for t, _ in w.top]
            assert [p for _, p in g.top] == pytest.approx([p for _, p in w.top], abs=1e-4)
    drafted, accepted = counts(on)
    assert drafted > d0 and accepted > a0  # drafts were verified and kept


def test_grammar_constrained_output_is_identical(
    engines: tuple[LoadedModel, LoadedModel],
) -> None:
    off, on = engines
    gbnf = 'root ::= ("ab" | "cd" | " ")+'
    prompt = off.tokenize("ab cd ab cd ab cd ab")
    for sp in (SamplingParams(temperature=0.0, grammar=gbnf), SamplingParams(seed=3, grammar=gbnf)):
        req = GenerationRequest(prompt, 12, sp)
        want, got = run(off, req)[0], run(on, req)[0]
        assert got.text == want.text
        assert set(got.text) <= set("abcd ")


def test_sampled_tokens_follow_the_target_distribution(
    engines: tuple[LoadedModel, LoadedModel],
) -> None:
    """Independent seeds with and without speculation: the 2nd and 3rd tokens (verified from
    drafts when drafting) have the same distribution (chi-square, 0.1 % level)."""
    off, on = engines
    prompt = off.tokenize("a b c d e a b c d e a b c d e a b c")
    n = 40

    def sample(lm: LoadedModel, first_seed: int) -> Counter[tuple[int, ...]]:
        reqs = [
            GenerationRequest(prompt, 3, SamplingParams(temperature=1.5, top_k=4, seed=s))
            for s in range(first_seed, first_seed + n)
        ]
        return Counter(tuple(o.tokens[1:3]) for o in run(lm, *reqs))

    d0, _ = counts(on)
    a, b = sample(off, 1000), sample(on, 5000)
    assert counts(on)[0] > d0
    # Pool rare outcomes so every cell has a reasonable expectation.
    common = {k for k in a | b if a[k] + b[k] >= 8}
    cells = [(a[k], b[k]) for k in common]
    cells.append((n - sum(a[k] for k in common), n - sum(b[k] for k in common)))
    chi2 = sum((x - y) ** 2 / (x + y) for x, y in cells if x + y)
    dof = max(len([c for c in cells if sum(c)]) - 1, 1)
    # Wilson-Hilferty upper 0.1 % point of chi-square(dof).
    crit = dof * (1 - 2 / (9 * dof) + 3.09 * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < crit, (chi2, crit, a, b)


def test_max_tokens_stops_and_continuation(engines: tuple[LoadedModel, LoadedModel]) -> None:
    off, on = engines
    prompt = off.tokenize(PROMPTS[2])
    for n in (1, 2, 5):
        got = run(on, GenerationRequest(prompt, n, GREEDY))[0]
        assert len(got.tokens) == n and got.handle.usage.completion_tokens == n
        assert got.tokens == run(off, GenerationRequest(prompt, n, GREEDY))[0].tokens
    # A stop string in the middle of an accepted draft ends the text there.
    stop = (" 14,",)
    want, got = (run(lm, GenerationRequest(prompt, 12, GREEDY, stop=stop))[0] for lm in engines)
    assert got.text == want.text and got.reason == want.reason == FinishReason.STOP
    # request_id: 8 tokens kept, then 8 more from the saved KV, equal one call of 16.
    whole = run(off, GenerationRequest(prompt, 16, GREEDY))[0].tokens
    first = run(on, GenerationRequest(prompt, 8, GREEDY, keep=True))[0]
    saved = first.handle.saved
    assert saved is not None and len(saved.tokens) == len(prompt) + 7
    second = run(on, GenerationRequest([], 8, GREEDY, resume=saved, keep=True))[0]
    assert first.tokens + second.tokens == whole


def test_n_choices_share_the_prefill_and_match(engines: tuple[LoadedModel, LoadedModel]) -> None:
    off, on = engines
    prompt = off.tokenize(PROMPTS[0])
    params = [SamplingParams(temperature=0.8, seed=70 + i) for i in range(2)]
    forked = run(on, *(GenerationRequest(prompt, 12, p, fork_group=7, fork_size=2) for p in params))
    alone = [run(off, GenerationRequest(prompt, 12, p))[0].tokens for p in params]
    assert [o.tokens for o in forked] == alone


def test_draft_model_verifies_inside_the_batch(model_path: Path, tmp_path: Path) -> None:
    """A draft GGUF (here a copy of the target: every draft is right) keeps greedy output."""
    draft = shutil.copy(model_path, tmp_path / "draft.gguf")
    off = LoadedModel("off", model_path, OPTS)
    on = LoadedModel(
        "draft", model_path, replace(OPTS, draft_model=Path(draft), speculate_always=True)
    )
    try:
        assert on.draft is not None
        reqs = [GenerationRequest(off.tokenize(p), 16, GREEDY) for p in PROMPTS[1:]]
        want = [run(off, r)[0].tokens for r in reqs]
        assert [o.tokens for o in run(on, *reqs)] == want
        spec = on.generator().spec
        assert spec.drafted["draft"] > 0
        assert spec.accepted["draft"] >= spec.drafted["draft"] * 0.8
        # A continuation re-prefills the draft context from the restored tokens.
        first = run(on, GenerationRequest(reqs[0].prompt_tokens, 7, GREEDY, keep=True))[0]
        rest = run(on, GenerationRequest([], 9, GREEDY, resume=first.handle.saved))[0]
        assert first.tokens + rest.tokens == want[0]
    finally:
        on.close()
        off.close()


def test_speculation_stays_off_where_rows_are_not_exact(model_path: Path) -> None:
    """Without flash attention this llama.cpp attends several rows of a sequence with another
    kernel than one row: the load-time probe notices and keeps plain decoding."""
    lm = LoadedModel(
        "nofa", model_path, replace(OPTS, ctx_size=1024, flash_attn=False, speculate=True)
    )
    try:
        spec = lm.generator().spec
        assert not spec.usable
        out = run(lm, GenerationRequest(lm.tokenize(PROMPTS[2]), 6, GREEDY))[0]
        assert len(out.tokens) == 6
        assert spec.disabled["inexact"] == 1 and sum(spec.drafted.values()) == 0
    finally:
        lm.close()


def test_speculation_stays_off_where_long_histories_are_not_exact(model_path: Path) -> None:
    """With flash attention and room for 512 cells a sequence, a lone row over a long history
    is computed with the KV split over threads and several rows are not: the probe decodes
    its rows after as long a history as a sequence may hold, and keeps plain decoding."""
    lm = LoadedModel("long", model_path, replace(OPTS, ctx_size=1024, speculate=True))
    try:
        spec = lm.generator().spec
        assert not spec.usable and spec.off_reason == "inexact"
    finally:
        lm.close()


def test_hang_up_amid_drafting_frees_the_slot_and_keeps_the_rest_exact(
    engines: tuple[LoadedModel, LoadedModel],
) -> None:
    off, on = engines
    prompt = off.tokenize(PROMPTS[2])
    sched = on.generator()

    async def main() -> None:
        h = on.submit(GenerationRequest(prompt, 200, GREEDY))
        async for c in h.chunks():
            if c.token_ids:
                break
        h.cancel()
        for _ in range(3000):
            if sched.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert sched.outstanding == 0 and sched.busy_slots == 0

    asyncio.run(main())
    # The slot it left (KV trimmed or not) serves the next request exactly.
    req = GenerationRequest(prompt, 8, GREEDY)
    assert run(on, req)[0].tokens == run(off, req)[0].tokens
