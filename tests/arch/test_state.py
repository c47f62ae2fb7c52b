"""Sliding window, recurrent state and mixture of experts on the real engine (issue 29).

For each class, under `--exact` and under the fast default, with prompts shorter and longer
than the window: a continuation equals one uninterrupted run, a returning turn equals a cold
run, beams and n > 1 equal their solo runs, and greedy tokens equal a plain llama.cpp loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import BeamParams
from tests.arch.drive import CTX, flush, generate, greedy, prompt, reference, together
from tests.arch.models import WINDOW
from tests.integration.modes import MODES

SLOTS = 3
LENGTHS = {"short": WINDOW - 12, "long": 3 * WINDOW}


@pytest.fixture(
    scope="module",
    params=[(k, m) for k in ("gemma2", "mamba2", "qwen3moe") for m in sorted(MODES)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def lm(arch_models: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    kind, mode = request.param
    m = LoadedModel(
        kind,
        arch_models[kind],
        EngineOptions(ctx_size=CTX, parallel=SLOTS, cache_ram=64 << 20, **MODES[mode]),
    )
    yield m
    m.close()


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_greedy_equals_llama_loop(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length])
    flush(lm, SLOTS)
    got, _ = generate(lm, greedy(p, 16))
    want = reference(lm.path, p, 16, flash_attn=lm.mode.flash_attn)
    assert got == want


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_continuation_8_plus_8(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=1)
    flush(lm, SLOTS)
    whole, _ = generate(lm, greedy(p, 16))
    first, kept = generate(lm, greedy(p, 8, keep=True))
    flush(lm, SLOTS)
    second, _ = generate(lm, greedy([], 8, resume=kept, keep=True))
    assert first + second == whole
    # and without eviction (the slot still holds it)
    first, kept = generate(lm, greedy(p, 8, keep=True))
    second, _ = generate(lm, greedy([], 8, resume=kept, keep=True))
    assert first + second == whole


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_returning_turn(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=2)
    flush(lm, SLOTS)
    out, _ = generate(lm, greedy(p, 8))
    turn = p + out + prompt(lm, 6, seed=3)
    flush(lm, SLOTS)
    cold, _ = generate(lm, greedy(turn, 8))
    # slot reuse
    generate(lm, greedy(p, 8))
    warm, _ = generate(lm, greedy(turn, 8))
    assert warm == cold
    # prompt cache after eviction
    generate(lm, greedy(p, 8))
    flush(lm, SLOTS)
    again, _ = generate(lm, greedy(turn, 8))
    assert again == cold


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_n_and_beams_equal_solo(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=4)
    flush(lm, SLOTS)
    solo, _ = generate(lm, greedy(p, 10))
    choices = together(lm, [greedy(p, 10, fork_group=7, fork_size=3) for _ in range(3)])
    assert choices == [solo] * 3
    flush(lm, SLOTS)
    beam_solo, _ = generate(lm, greedy(p, 10, beams=BeamParams(3, 1.0)))
    generate(lm, greedy(p, 4))
    beam_again, _ = generate(lm, greedy(p, 10, beams=BeamParams(3, 1.0)))
    assert beam_again == beam_solo
