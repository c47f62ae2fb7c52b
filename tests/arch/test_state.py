"""Sliding window, recurrent state and mixture of experts on the real engine (issue 29).

Each class runs under both contracts (tests/integration/modes.py), with prompts shorter and
longer than the sliding window:

- both: greedy tokens equal a plain llama.cpp loop; a request_id continued 8 + 8 equals 16 at
  once (held in its slot, or restored after eviction); n > 1 choices and beams equal their
  solo runs; a prefix the memory no longer holds (a window that slid, a recurrent state past
  it) is never reused.
- `--exact`: a returning turn (slot reuse, or prompt-cache restore after eviction) equals a
  cold run token for token, resuming at the end of the first prompt (a recurrent state from
  the checkpoint taken there: the slot's state, past the reply, cannot be cut back).
- fast default: a returning turn reuses every held token the memory can resume (the whole
  recurrent state included) and equals a llama.cpp loop replaying the same steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.decode.slots import common_prefix
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import BeamParams
from tests.arch.drive import CTX, flush, generate, greedy, prompt, reference, together
from tests.arch.models import WINDOW
from tests.integration.modes import MODES

SLOTS = 3
LENGTHS = {"inside": WINDOW - 10, "beyond": 2 * WINDOW + 40}
KINDS = ("gemma2", "mamba2", "lfm2", "qwen3moe")


@pytest.fixture(
    scope="module",
    params=[(k, m) for k in KINDS for m in sorted(MODES)],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def lm(arch_models: dict[str, Path], request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    kind, mode = request.param
    options = EngineOptions(ctx_size=CTX, parallel=SLOTS, cache_ram=64 << 20, **MODES[mode])
    m = LoadedModel(kind, arch_models[kind], options)
    yield m
    m.close()


def recurrent(lm: LoadedModel) -> bool:
    return lm.model.recurrent or lm.model.hybrid


def loop(lm: LoadedModel, feeds: list[list[int]], n: int) -> list[int]:
    return reference(lm.path, feeds, n, flash_attn=lm.mode.flash_attn)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_greedy_equals_llama_loop(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length])
    flush(lm, SLOTS)
    assert generate(lm, greedy(p, 16)).tokens == loop(lm, [p], 16)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_continuation_8_plus_8_equals_16(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=1)
    flush(lm, SLOTS)
    whole = generate(lm, greedy(p, 16)).tokens
    # Restored after eviction: the kept state's bytes go into whichever slot is free.
    first = generate(lm, greedy(p, 8, keep=True))
    flush(lm, SLOTS)
    second = generate(lm, greedy([], 8, resume=first.saved, keep=True))
    assert first.tokens + second.tokens == whole
    # Then the prompt again: its slot now holds a restored state, which keeps only the
    # window (or the recurrent state's last position); the prefix must not be reused from it.
    first = generate(lm, greedy(p, 8, keep=True))
    # Held in its slot: the continuation goes on from the slot's own KV.
    second = generate(lm, greedy([], 8, resume=first.saved, keep=True))
    assert first.tokens + second.tokens == whole


def _turn(lm: LoadedModel, length: str) -> tuple[list[int], list[int], list[int]]:
    """A first turn from an empty slot: its prompt, its answer, the next turn's prompt."""
    p = prompt(lm, LENGTHS[length], seed=2)
    flush(lm, SLOTS)
    lm.generator().cache.clear()
    out = generate(lm, greedy(p, 8)).tokens
    return p, out, p + out + prompt(lm, 6, seed=3)


def _check_returning(lm: LoadedModel, p: list[int], out: list[int], turn: list[int]) -> None:
    """The returning turn just ran into a cache filled by `p` and its answer `out`."""
    warm = generate(lm, greedy(turn, 8))
    if lm.mode.exact:
        # Only KV prefilled in chunks counts: the first prompt's (a recurrent model's from
        # the checkpoint taken when that prompt was in).
        assert warm.cached == len(p)
        flush(lm, SLOTS)
        lm.generator().cache.clear()
        assert warm.tokens == generate(lm, greedy(turn, 8)).tokens  # cold
    else:
        # Every held token (the answer's last one was sampled, never decoded).
        held = len(p) + len(out) - 1
        assert warm.cached == held
        steps = [p, *([t] for t in out[:-1]), turn[held:]]
        assert warm.tokens == loop(lm, steps, 8)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_returning_turn_reuses_its_slot(lm: LoadedModel, length: str) -> None:
    p, out, turn = _turn(lm, length)
    _check_returning(lm, p, out, turn)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_returning_turn_restores_from_prompt_cache(lm: LoadedModel, length: str) -> None:
    p, out, turn = _turn(lm, length)
    hits = lm.generator().cache.hits
    flush(lm, SLOTS)  # evicts the first turn's slot into the prompt cache
    _check_returning(lm, p, out, turn)
    assert lm.generator().cache.hits == hits + 1


def test_prefix_the_memory_no_longer_holds_is_not_reused(lm: LoadedModel) -> None:
    """A slot holding a restored state (the window's cells only, or a recurrent state's last
    position), then a prompt sharing all but its last words: where the memory cannot be cut
    back there, nothing is reused and the answer equals a cold run."""
    p = prompt(lm, LENGTHS["beyond"], seed=5)
    flush(lm, SLOTS)
    first = generate(lm, greedy(p, 8, keep=True))
    flush(lm, SLOTS)  # into the prompt cache; the continuation restores the kept bytes
    generate(lm, greedy([], 8, resume=first.saved))
    edited = p[:-6] + prompt(lm, 6, seed=6)
    shared = common_prefix(p, edited)
    warm = generate(lm, greedy(edited, 8))
    assert warm.cached == (0 if lm.model.n_swa or recurrent(lm) else shared)
    if warm.cached == 0 or lm.mode.exact:
        assert warm.tokens == loop(lm, [edited], 8)


def test_cache_prefers_an_entry_the_memory_can_resume(lm: LoadedModel) -> None:
    """A conversation's last words edited: the cached entry sharing most with the new prompt
    (the whole previous turn) would be cut back behind its window or into its recurrent
    state, so the earlier entry that is a whole prefix of the prompt is restored instead."""
    p, out, turn = _turn(lm, "beyond")
    flush(lm, SLOTS)  # entry A: the first turn
    generate(lm, greedy(turn, 8))
    flush(lm, SLOTS)  # entry B: the second turn, A's extension
    edited = turn[:-3] + prompt(lm, 3, seed=7)
    warm = generate(lm, greedy(edited, 8))
    first = len(p) if lm.mode.exact else len(p) + len(out) - 1
    if not lm.model.n_swa and not recurrent(lm):
        assert warm.cached == common_prefix(turn, edited)  # B cut back: a KV cache can
    else:
        assert warm.cached == first
    if lm.mode.exact:
        assert warm.tokens == loop(lm, [edited], 8)


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_n_choices_equal_solo(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=4)
    flush(lm, SLOTS)
    solo = generate(lm, greedy(p, 10)).tokens
    flush(lm, SLOTS)
    choices = together(lm, [greedy(p, 10, fork_group=7, fork_size=3) for _ in range(3)])
    assert choices == [solo] * 3


@pytest.mark.parametrize("length", sorted(LENGTHS))
def test_beams_equal_solo(lm: LoadedModel, length: str) -> None:
    p = prompt(lm, LENGTHS[length], seed=4)
    flush(lm, SLOTS)
    solo = generate(lm, greedy(p, 10, beams=BeamParams(3, 1.0))).tokens
    generate(lm, greedy(p, 4))  # the prompt's KV now waits in a slot
    again = generate(lm, greedy(p, 10, beams=BeamParams(3, 1.0))).tokens
    assert again == solo
    one = generate(lm, greedy(p, 10, beams=BeamParams(1, 1.0))).tokens
    assert one == generate(lm, greedy(p, 10)).tokens
