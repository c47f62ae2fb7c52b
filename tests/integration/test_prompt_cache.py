"""The prompt cache below the slots on the real SmolLM2 GGUF (issue 13).

Two slots and more conversations than slots: a returning conversation finds its slot taken
and must restore its history from the cache, with exactly the greedy tokens and
log-probabilities of a cold run (a model with the cache off, its slot emptied first).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from daemon.config import embedded_model_path
from daemon.engine.caches.prompt_cache import BLOCK
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.native.sampler import JSON_OBJECT_GBNF
from daemon.engine.types import BeamParams, GenerationRequest, SamplingParams, SavedSequence

GREEDY = SamplingParams(temperature=0.0)
WORDS = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter"]


def options(**kw: object) -> EngineOptions:
    return EngineOptions(**{"ctx_size": 1024, "parallel": 2, "threads": 1, **kw})  # type: ignore[arg-type]


@dataclass
class Answer:
    tokens: list[int]
    logprobs: list[float]
    cached: int


async def _collect(h: RequestHandle) -> Answer:
    tokens: list[int] = []
    lps: list[float] = []
    async for c in h.chunks():
        tokens.extend(c.token_ids)
        lps.extend(lp.logprob for lp in c.logprobs)
    return Answer(tokens, lps, h.usage.cached_tokens)


def ask(lm: LoadedModel, req: GenerationRequest) -> Answer:
    return ask_kept(lm, req)[0]


def ask_kept(lm: LoadedModel, req: GenerationRequest) -> tuple[Answer, SavedSequence | None]:
    """The answer, and what a request with `keep` saved for a continuation."""

    async def main() -> tuple[Answer, SavedSequence | None]:
        h = lm.submit(req)
        return await _collect(h), h.saved

    return asyncio.run(main())


def request(tokens: list[int], owner: str = "a", n: int = 6, **kw: object) -> GenerationRequest:
    return GenerationRequest(list(tokens), n, GREEDY, logprobs=0, owner=owner, **kw)  # type: ignore[arg-type]


def history(lm: LoadedModel, seed: int, words: int = 180) -> list[int]:
    text = " ".join(WORDS[(seed * 5 + i * i) % len(WORDS)] for i in range(words))
    return lm.tokenize(f"Conversation {seed}: {text}\nSummary:")


class Cold:
    """Reference answers from a model with the cache off, each from an empty slot."""

    def __init__(self) -> None:
        self.lm = LoadedModel("cold", embedded_model_path(), options(cache_ram=0))
        self.flush = self.lm.tokenize("Zz")

    def empty(self) -> None:
        """Both slots take a prompt sharing no token with the test's: nothing is reused."""

        async def both() -> None:
            hs = [
                self.lm.submit(
                    GenerationRequest(list(self.flush), 1, GREEDY, fork_group=-1, fork_size=2)
                )
                for _ in range(2)
            ]
            for h in hs:
                await _collect(h)

        asyncio.run(both())

    def __call__(self, req: GenerationRequest) -> Answer:
        self.empty()
        return ask(self.lm, req)


@pytest.fixture(scope="module")
def cold() -> Iterator[Cold]:
    c = Cold()
    yield c
    c.lm.close()


@pytest.fixture(scope="module")
def warm() -> Iterator[LoadedModel]:
    lm = LoadedModel("warm", embedded_model_path(), options(cache_ram=256 << 20))
    yield lm
    lm.close()


def take_both_slots(lm: LoadedModel, seed: int, owner: str = "z") -> None:
    """Two other conversations fill both slots at once (the returning one's slot is taken;
    one after the other, the second would reuse the first's slot: another key's is no
    prefix of theirs)."""

    async def both() -> None:
        hs = [lm.submit(request(history(lm, s, 20), owner, n=4)) for s in (seed, seed + 1)]
        for h in hs:
            await _collect(h)

    asyncio.run(both())


def returning(lm: LoadedModel, seed: int, owner: str = "a") -> list[int]:
    """A conversation's first turn, then other traffic; returns its next turn's prompt."""
    first = history(lm, seed)
    out = ask(lm, request(first, owner))
    take_both_slots(lm, 100 + seed)
    return first + out.tokens + lm.tokenize(" And then?")


def test_returning_conversation_restores_and_matches_cold(warm: LoadedModel, cold: Cold) -> None:
    pc = warm.generator().cache
    hits = pc.hits
    prompt = returning(warm, 1)
    got = ask(warm, request(prompt))
    assert pc.hits == hits + 1
    assert got.cached >= 2 * BLOCK
    ref = cold(request(prompt))
    assert ref.cached == 0
    assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)


def test_another_key_does_not_hit(warm: LoadedModel, cold: Cold) -> None:
    prompt = returning(warm, 2, owner="a")
    got = ask(warm, request(prompt, owner="b"))
    assert got.cached == 0
    assert (got.tokens, got.logprobs) == (lambda r: (r.tokens, r.logprobs))(cold(request(prompt)))
    # ... and the owner still does (b's run did not disturb a's entry).
    assert ask(warm, request(prompt, owner="a")).cached >= 2 * BLOCK


def test_another_key_hits_when_sharing_is_allowed(cold: Cold) -> None:
    shared = LoadedModel(
        "shared", embedded_model_path(), options(cache_ram=64 << 20, cache_share_tokens=BLOCK)
    )
    try:
        prompt = returning(shared, 3, owner="a")
        got = ask(shared, request(prompt, owner="b"))
        assert got.cached == BLOCK  # the operator's cap, not the whole history
        ref = cold(request(prompt))
        assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)
    finally:
        shared.close()


@pytest.mark.parametrize(
    "kind", ["fork", "beams", "grammar", "keep"], ids=["n2", "beams", "grammar", "request_id"]
)
def test_meetings_match_the_cache_off_model(kind: str, warm: LoadedModel, cold: Cold) -> None:
    """n > 1, beams, grammar and request_id continuation over a restored prefix."""
    prompt = returning(warm, 10 + len(kind))

    def script(lm: LoadedModel) -> list[Answer]:
        if kind == "fork":

            async def both() -> list[Answer]:
                hs = [lm.submit(request(prompt, fork_group=7, fork_size=2)) for _ in range(2)]
                return list(await asyncio.gather(*(_collect(h) for h in hs)))

            return asyncio.run(both())
        if kind == "beams":
            return [ask(lm, request(prompt, n=5, beams=BeamParams(2)))]
        if kind == "grammar":
            sp = SamplingParams(temperature=0.0, grammar=JSON_OBJECT_GBNF)
            return [ask(lm, GenerationRequest(list(prompt), 6, sp, logprobs=0, owner="a"))]

        first, saved = ask_kept(lm, request(prompt, n=3, keep=True))
        if lm is warm:
            take_both_slots(lm, 300)  # the continuation restores from the request_id store
        return [first, ask(lm, GenerationRequest([], 3, GREEDY, logprobs=0, resume=saved))]

    got = script(warm)
    assert got[0].cached >= 2 * BLOCK
    cold.empty()
    ref = script(cold.lm)
    assert [(a.tokens, a.logprobs) for a in got] == [(a.tokens, a.logprobs) for a in ref]


def test_hang_up_mid_prefill_then_the_same_prompt(warm: LoadedModel, cold: Cold) -> None:
    prompt = history(warm, 40, 500)

    async def hang_up() -> None:
        h = warm.submit(request(prompt))
        await asyncio.sleep(0.05)
        h.cancel()
        async for _ in h.chunks():
            pass

    asyncio.run(hang_up())
    take_both_slots(warm, 400)
    got = ask(warm, request(prompt))
    ref = cold(request(prompt))
    assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)


def test_bound_holds_and_unload_drops_the_cache(tmp_path: Path, cold: Cold) -> None:
    one = ask(cold.lm, request(history(cold.lm, 50, 90), n=1))  # warm-up only
    assert one.tokens
    bound = 12 << 20  # about two 200-token states of this model
    lm = LoadedModel("bounded", embedded_model_path(), options(cache_ram=bound, cache_dir=tmp_path))
    pc = lm.generator().cache
    try:
        for seed in range(60, 66):
            ask(lm, request(history(lm, seed), n=1))
            assert pc.nbytes <= bound
        pc.flush()  # spills are written by the cache's writer thread
        assert pc.evictions >= 1 and pc.disk_bytes > 0  # LRU went to disk
        prompt = history(lm, 60) + lm.tokenize(" Again.")
        got = ask(lm, request(prompt))  # the oldest, read back from its spill file
        assert got.cached >= 2 * BLOCK
        ref = cold(request(prompt))
        assert (got.tokens, got.logprobs) == (ref.tokens, ref.logprobs)
        assert list(tmp_path.rglob("*.seq"))
    finally:
        lm.close()
    assert len(pc) == 0 and pc.nbytes == 0
    assert not list(tmp_path.rglob("*.seq"))  # the cache belongs to the model's lifetime
