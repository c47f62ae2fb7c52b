"""Images in the scheduler on the real engine (no HTTP): a prompt with an image answers as a
cold run does whether its image comes from the slot, from the prompt cache below the slots,
or is decoded again; a different image is never taken for a cached one; `n` choices share
one prefill; requests that cannot carry images refuse them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.errors import InvalidInput
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.media import Medium, is_stand_in
from daemon.engine.types import BeamParams, GenerationRequest, SamplingParams
from tests.media.tiny_vlm import png_bytes, sample_image

GREEDY = SamplingParams(temperature=0.0)
MARKER = "<__media__>"
# Long enough that the image's positions lie past the prompt cache's first 64-token block.
LEAD = "Here is a long description of a scene. " * 12


def _options(**kw: object) -> EngineOptions:
    return EngineOptions(**{"ctx_size": 1024, "parallel": 2, "threads": 1, **kw})  # type: ignore[arg-type]


def _medium(seed: int) -> Medium:
    import hashlib

    data = png_bytes(sample_image(seed=seed))
    return Medium(data, hashlib.sha256(data).hexdigest())


@pytest.fixture(scope="module")
def warm(vlm_lm_path: Path, mmproj: dict[str, Path]) -> Iterator[LoadedModel]:
    lm = LoadedModel("warm", vlm_lm_path, _options(), projector=mmproj["f32"])
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def cold(vlm_lm_path: Path, mmproj: dict[str, Path]) -> Iterator[LoadedModel]:
    lm = LoadedModel("cold", vlm_lm_path, _options(cache_ram=0), projector=mmproj["f32"])
    yield lm
    lm.close()


def _request(lm: LoadedModel, seed: int, question: str, **kw: object) -> GenerationRequest:
    text = lm.render_chat([{"role": "user", "content": f"{LEAD}{MARKER}{question}"}])
    tokens, media = lm.media_prompt(text, [_medium(seed)])
    return GenerationRequest(tokens, 8, GREEDY, media=media, **kw)  # type: ignore[arg-type]


async def _collect(h: RequestHandle) -> tuple[list[int], int]:
    tokens: list[int] = []
    async for c in h.chunks():
        if c.finish_reason is not None and c.finish_reason.value == "error":
            raise AssertionError("the request failed")
        tokens.extend(c.token_ids)
    return tokens, h.usage.cached_tokens


def _ask(lm: LoadedModel, *reqs: GenerationRequest) -> list[tuple[list[int], int]]:
    async def main() -> list[tuple[list[int], int]]:
        return list(await asyncio.gather(*(_collect(lm.submit(r)) for r in reqs)))

    return asyncio.run(main())


def _text(lm: LoadedModel, words: str) -> GenerationRequest:
    return GenerationRequest(lm.tokenize(f"{words} and more {words}"), 4, GREEDY)


def _reference(cold: LoadedModel, seed: int, question: str) -> list[int]:
    _ask(cold, _text(cold, "zz"), _text(cold, "yy"))  # both slots hold nothing of ours
    ((tokens, cached),) = _ask(cold, _request(cold, seed, question))
    assert cached == 0
    return tokens


def test_stand_ins_sit_where_the_image_goes(warm: LoadedModel) -> None:
    req = _request(warm, 1, "What is it?")
    assert req.media is not None and len(req.media.spans) == 2  # Idefics3: two chunks
    for span in req.media.spans:
        assert all(is_stand_in(t) for t in req.prompt_tokens[span.start : span.end])
    assert sum(is_stand_in(t) for t in req.prompt_tokens) == sum(
        len(s.embd) for s in req.media.spans
    )
    assert req.media.spans[0].start > 64
    # The same image in another prompt gets the same stand-ins; another image does not.
    again = _request(warm, 1, "Another question?")
    other = _request(warm, 2, "What is it?")
    span = req.media.spans[0]
    assert again.prompt_tokens[span.start : span.end] == req.prompt_tokens[span.start : span.end]
    assert other.prompt_tokens[span.start : span.end] != req.prompt_tokens[span.start : span.end]


def test_slot_reuse_and_the_prompt_cache_restore_an_image(
    warm: LoadedModel, cold: LoadedModel
) -> None:
    want = _reference(cold, 1, "What is it?")
    ((first, _),) = _ask(warm, _request(warm, 1, "What is it?"))
    assert first == want
    # The same image and question again: from the slot.
    ((again, cached),) = _ask(warm, _request(warm, 1, "What is it?"))
    assert again == want
    image_end = _request(warm, 1, "What is it?").media.spans[-1].end  # type: ignore[union-attr]
    assert cached >= image_end
    # Both slots taken by other prompts: the image comes back from the prompt cache.
    _ask(warm, _text(warm, "zz"), _text(warm, "yy"))
    ((restored, cached),) = _ask(warm, _request(warm, 1, "What is it?"))
    assert restored == want
    assert cached >= 64


def test_another_image_is_never_taken_for_the_cached_one(
    warm: LoadedModel, cold: LoadedModel
) -> None:
    want = _reference(cold, 2, "What is it?")
    _ask(warm, _request(warm, 1, "What is it?"))
    ((got, cached),) = _ask(warm, _request(warm, 2, "What is it?"))
    assert got == want
    start = _request(warm, 2, "What is it?").media.spans[0].start  # type: ignore[union-attr]
    assert cached <= start  # the shared text before the image, never the image


def test_n_choices_share_the_image_prefill(warm: LoadedModel, cold: LoadedModel) -> None:
    want = _reference(cold, 3, "Colours?")
    reqs = [_request(warm, 3, "Colours?", fork_group=991, fork_size=2) for _ in range(2)]
    reqs[1] = GenerationRequest(
        reqs[0].prompt_tokens, 8, GREEDY, media=reqs[0].media, fork_group=991, fork_size=2
    )
    (a, _), (b, _) = _ask(warm, *reqs)
    assert a == b == want


@pytest.mark.parametrize(
    "kw",
    [{"beams": BeamParams(2)}, {"prompt_logprobs": True}],
    ids=["beams", "prompt_logprobs"],
)
def test_requests_that_read_prompt_ids_refuse_images(warm: LoadedModel, kw: dict) -> None:
    req = _request(warm, 1, "What is it?", **kw)

    async def main() -> None:
        h = warm.submit(req)
        async for _ in h.chunks():
            pass

    with pytest.raises(InvalidInput, match="images"):
        asyncio.run(main())


def test_the_fast_contract_reuses_an_image_beside_speculating_text(
    vlm_lm_path: Path, mmproj: dict[str, Path]
) -> None:
    """Without --exact, with --speculate (flash attention, n-gram speculation on): an image
    prompt runs beside a text prompt that drafts, and its returning turn reuses the image
    from the slot."""
    opts = _options(exact=False, flash_attn=True, speculate=True, speculate_always=True)
    lm = LoadedModel("fast", vlm_lm_path, opts, projector=mmproj["f32"])
    try:
        req = _request(lm, 4, "What is it?")
        words = " ".join(["one two three four"] * 20)
        (first, _), (text, _) = _ask(lm, req, GenerationRequest(lm.tokenize(words), 16, GREEDY))
        assert first and text
        ((again, cached),) = _ask(lm, _request(lm, 4, "What is it?"))
        assert again == first
        assert req.media is not None and cached >= req.media.spans[-1].end
    finally:
        lm.close()


def test_embeddings_are_cached_per_key(warm: LoadedModel) -> None:
    """Two keys sending one image: the second encodes it again (no timing tells it the
    first sent it); the first's return is a cache hit for each of its two chunks."""
    assert warm.media is not None
    cache = warm.media.cache
    text = warm.render_chat([{"role": "user", "content": f"{MARKER}Hi"}])
    warm.media_prompt(text, [_medium(9)], owner="k1")
    hits = cache.hits
    warm.media_prompt(text, [_medium(9)], owner="k2")
    assert cache.hits == hits
    warm.media_prompt(text, [_medium(9)], owner="k1")
    assert cache.hits == hits + 2


def test_an_image_larger_than_a_batch_is_decoded_over_steps(
    vlm_lm_path: Path, mmproj: dict[str, Path], cold: LoadedModel
) -> None:
    """A batch of 3 rows: each 4-row image chunk takes two steps (its rows resume where the
    last step stopped), and the answer is the cold run's."""
    want = _reference(cold, 5, "What is it?")
    lm = LoadedModel(
        "small", vlm_lm_path, _options(batch_size=3, ubatch_size=3), projector=mmproj["f32"]
    )
    try:
        req = _request(lm, 5, "What is it?")
        assert req.media is not None and all(len(s.embd) > 3 for s in req.media.spans)
        ((got, _),) = _ask(lm, req)
        assert got == want
    finally:
        lm.close()
