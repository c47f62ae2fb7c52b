"""request_id continuation and beam search in the engine, on the real model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import BeamParams, GenerationRequest, SamplingParams
from tests.integration.modes import MODES

GREEDY = SamplingParams(temperature=0.0)
PROMPTS = ["Once upon a time", "The best way to learn a language is", "def fibonacci(n):"]


@pytest.fixture(scope="module", params=sorted(MODES))
def lm(model_path: Path, request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    m = LoadedModel(
        "smol", model_path, EngineOptions(ctx_size=1024, parallel=4, **MODES[request.param])
    )
    yield m
    m.close()


async def text_of(handle: RequestHandle) -> str:
    return "".join([c.text async for c in handle.chunks()])


def run(lm: LoadedModel, req: GenerationRequest) -> tuple[str, RequestHandle]:
    async def main() -> tuple[str, RequestHandle]:
        h = lm.submit(req)
        return await text_of(h), h

    return asyncio.run(main())


def test_continuation_equals_one_long_generation(lm: LoadedModel) -> None:
    """24 greedy tokens, then 24 more from the kept state, equal 48 in one call."""
    prompt = lm.tokenize("The history of the printing press")
    whole, _ = run(lm, GenerationRequest(prompt, 48, GREEDY))
    first, h1 = run(lm, GenerationRequest(prompt, 24, GREEDY, keep=True))
    assert h1.saved is not None and h1.saved.state is not None
    # Evict the slot's cache so the continuation must restore the KV bytes, not reuse a slot.
    for i in range(4):
        run(lm, GenerationRequest(lm.tokenize(f"Unrelated text number {i}"), 4, GREEDY))
    second, h2 = run(lm, GenerationRequest([], 24, GREEDY, resume=h1.saved, keep=True))
    assert first + second == whole
    assert h2.usage.completion_tokens == 24
    assert h2.saved is not None
    assert len(h2.saved.tokens) + len(h2.saved.pending) == len(prompt) + 48


def test_finished_sequence_continues_with_nothing(lm: LoadedModel) -> None:
    prompt = lm.tokenize(lm.render_chat([{"role": "user", "content": "Say hi."}]))
    _, h1 = run(lm, GenerationRequest(prompt, 200, GREEDY, keep=True))
    assert h1.finish_reason is not None and h1.finish_reason.value == "stop"
    assert h1.saved is not None and h1.saved.finished
    text, h2 = run(lm, GenerationRequest([], 10, GREEDY, resume=h1.saved, keep=True))
    assert text == ""
    assert h2.finish_reason is not None and h2.finish_reason.value == "stop"


def test_beam_width_one_is_greedy(lm: LoadedModel) -> None:
    prompt = lm.tokenize(PROMPTS[0])
    greedy, _ = run(lm, GenerationRequest(prompt, 16, GREEDY))
    beam1, _ = run(lm, GenerationRequest(prompt, 16, GREEDY, beams=BeamParams(1)))
    assert beam1 == greedy


@pytest.mark.parametrize("text", PROMPTS)
def test_beam_search_beats_greedy_and_is_deterministic(lm: LoadedModel, text: str) -> None:
    """The best of 4 beams has at least greedy's total log-probability (same length)."""
    prompt = lm.tokenize(text)
    _, greedy = run(lm, GenerationRequest(prompt, 16, GREEDY, beams=BeamParams(1, 0.0)))
    out1, beam = run(lm, GenerationRequest(prompt, 16, GREEDY, beams=BeamParams(4, 0.0)))
    out2, _ = run(lm, GenerationRequest(prompt, 16, GREEDY, beams=BeamParams(4, 0.0)))
    assert out1 == out2
    assert greedy.beam_logprob is not None and beam.beam_logprob is not None
    print(f"{text!r}: greedy {greedy.beam_logprob:.3f}, 4 beams {beam.beam_logprob:.3f}")
    assert beam.beam_logprob >= greedy.beam_logprob - 1e-6
    # Beam slots are free again afterwards.
    assert lm.scheduler is not None and lm.scheduler.busy_slots == 0


def test_beam_sampling_is_seeded(lm: LoadedModel) -> None:
    prompt = lm.tokenize(PROMPTS[1])
    sp = SamplingParams(temperature=1.0, top_k=50, seed=7)
    req = GenerationRequest(prompt, 12, sp, beams=BeamParams(3, 1.0, do_sample=True))
    assert run(lm, req)[0] == run(lm, req)[0]


def test_n_choices_prefill_once_and_match_solo_runs(lm: LoadedModel) -> None:
    """A fork group prefills its prompt once; each choice equals the same request run alone."""
    prompt = lm.tokenize("Invent a name for a cat, then explain it:")
    params = [SamplingParams(temperature=1.0, seed=40 + i) for i in range(3)]
    assert lm.scheduler is not None
    before = lm.scheduler.prefill_tokens

    async def forked() -> list[str]:
        hs = [
            lm.submit(GenerationRequest(prompt, 12, params[i], fork_group=99, fork_size=3))
            for i in range(3)
        ]
        return list(await asyncio.gather(*(text_of(h) for h in hs)))

    together = asyncio.run(forked())
    assert lm.scheduler.prefill_tokens - before == len(prompt)
    alone = [run(lm, GenerationRequest(prompt, 12, params[i]))[0] for i in range(3)]
    assert together == alone
    assert len(set(together)) > 1
