"""One request can never hurt another, in the engine on the real SmolLM2 (issue 11).

Each test reproduces a row or sentence of the issue: what the request_id store keeps, a
failure staying with its own sequence, beam scoring at any length_penalty, fairness
between API keys, and the liveness marks the watchdog reads.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.caches.cache import SequenceStore
from daemon.engine.decode import scheduler as scheduler_module
from daemon.engine.errors import IdBusy
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import (
    BeamParams,
    FinishReason,
    GenerationRequest,
    SamplingParams,
    SavedSequence,
)
from daemon.errors import EdgedError, Timeout
from tests.integration.modes import MODES

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module", params=sorted(MODES))
def lm(model_path: Path, request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    # Two slots: other requests reuse the slot a finished request left behind.
    opts = EngineOptions(ctx_size=1024, parallel=2, max_queue=16, **MODES[request.param])
    m = LoadedModel("smol", model_path, opts)
    yield m
    m.close()


async def drain(h: RequestHandle) -> tuple[str, list[int], FinishReason]:
    """Every chunk of a handle: text, token ids and the finish reason."""
    text, ids = [], []
    reason = None
    async for c in h.chunks():
        text.append(c.text)
        ids.extend(c.token_ids)
        reason = c.finish_reason
    assert reason is not None
    return "".join(text), ids, reason


def run(lm: LoadedModel, *reqs: GenerationRequest) -> list[tuple[str, RequestHandle]]:
    async def main() -> list[tuple[str, RequestHandle]]:
        hs = [lm.submit(r) for r in reqs]
        outs = await asyncio.gather(*(drain(h) for h in hs))
        return [(o[0], h) for o, h in zip(outs, hs, strict=True)]

    return asyncio.run(main())


def one(lm: LoadedModel, req: GenerationRequest) -> tuple[str, RequestHandle]:
    return run(lm, req)[0]


def chat(lm: LoadedModel, text: str) -> list[int]:
    return lm.tokenize(lm.render_chat([{"role": "user", "content": text}]))


def history(saved: SavedSequence | None) -> tuple[int, ...]:
    assert saved is not None
    return saved.tokens + saved.pending


# ---- row 1: a finished id never saves what another request left in the slot -----------


def test_continuing_a_finished_id_keeps_its_own_history(lm: LoadedModel) -> None:
    _, a = one(lm, GenerationRequest(chat(lm, "Say hi."), 200, GREEDY, keep=True, owner="A"))
    assert a.finish_reason is FinishReason.STOP and a.saved is not None and a.saved.finished
    mine = history(a.saved)
    # Key B fills both slots with its own prompt and answer.
    secret = chat(lm, "The password is swordfish. Repeat the password.")
    run(
        lm,
        GenerationRequest(secret, 12, GREEDY, owner="B"),
        GenerationRequest(secret, 12, GREEDY, owner="B"),
    )
    text, again = one(lm, GenerationRequest([], 10, GREEDY, resume=a.saved, keep=True))
    assert text == "" and again.finish_reason is FinishReason.STOP
    assert history(again.saved) == mine  # not B's tokens
    _, third = one(lm, GenerationRequest([], 10, GREEDY, resume=again.saved, keep=True))
    assert history(third.saved) == mine
    assert "swordfish" not in lm.model.detokenize(list(history(third.saved)))


# ---- row 6: max_new_tokens 0 on a continuation -----------------------------------------


def test_zero_new_tokens_on_a_continuation_loses_nothing(lm: LoadedModel) -> None:
    prompt = lm.tokenize("The history of the printing press")
    whole, _ = one(lm, GenerationRequest(prompt, 16, GREEDY))
    first, h1 = one(lm, GenerationRequest(prompt, 8, GREEDY, keep=True))
    text, h0 = one(lm, GenerationRequest([], 0, GREEDY, resume=h1.saved, keep=True))
    assert text == "" and h0.saved == h1.saved and not h0.saved.finished
    second, _ = one(lm, GenerationRequest([], 8, GREEDY, resume=h0.saved, keep=True))
    assert first + second == whole


def test_zero_new_tokens_on_a_fresh_prompt_keeps_the_prompt(lm: LoadedModel) -> None:
    prompt = lm.tokenize("A list of prime numbers: 2, 3, 5,")
    whole, _ = one(lm, GenerationRequest(prompt, 8, GREEDY))
    _, h0 = one(lm, GenerationRequest(prompt, 0, GREEDY, keep=True))
    assert history(h0.saved) == tuple(prompt) and not h0.saved.finished
    text, _ = one(lm, GenerationRequest([], 8, GREEDY, resume=h0.saved, keep=True))
    assert text == whole


# ---- beams continuing continuations ------------------------------------------------------


def test_beam_continuation_of_a_continuation_keeps_the_whole_history(lm: LoadedModel) -> None:
    prompt = lm.tokenize("Once upon a time")
    _, h1 = one(lm, GenerationRequest(prompt, 6, GREEDY, keep=True))
    _, h2 = one(lm, GenerationRequest([], 6, GREEDY, resume=h1.saved, keep=True))
    beams = BeamParams(2, 1.0)
    _, h3 = one(lm, GenerationRequest([], 6, GREEDY, beams=beams, resume=h2.saved, keep=True))
    before = history(h2.saved)
    after = history(h3.saved)
    assert after[: len(before)] == before  # the middle call's tokens are still there
    assert len(after) == len(prompt) + 18
    _, h4 = one(lm, GenerationRequest([], 4, GREEDY, beams=beams, resume=h3.saved, keep=True))
    assert history(h4.saved)[: len(after)] == after


# ---- hang-ups and timeouts keep the exact history; the id stays claimed meanwhile ------


def test_cancel_keeps_exactly_the_tokens_generated(lm: LoadedModel) -> None:
    prompt = lm.tokenize("Count from one to one hundred: one, two,")

    async def main() -> tuple[list[int], RequestHandle]:
        h = lm.submit(GenerationRequest(prompt, 300, GREEDY, keep=True))
        ids: list[int] = []
        async for c in h.chunks():
            ids.extend(c.token_ids)
            if len(ids) >= 5:
                h.cancel()
            if c.finish_reason is not None:
                assert c.finish_reason is FinishReason.CANCELLED
        return ids, h

    ids, h = asyncio.run(main())
    assert history(h.saved) == tuple(prompt) + tuple(ids)
    # ... and continuing it equals generating on without the cut.
    more, _ = one(lm, GenerationRequest([], 6, GREEDY, resume=h.saved, keep=True))
    ref, _ = one(lm, GenerationRequest(prompt, len(ids) + 6, GREEDY))
    assert lm.model.detokenize(ids) + more == ref


def test_a_timeout_holds_the_id_until_the_engine_is_done(lm: LoadedModel) -> None:
    """The API's timeout releases the reader; the id's guard waits for the engine."""
    store = SequenceStore(1 << 30)
    key = ("A", "slow")
    # A long prompt: its prefill takes several decode steps, so the engine is mid-step when
    # the timeout strikes.
    prompt = lm.tokenize("word " * 900)

    async def main() -> tuple[bool, SavedSequence | None]:
        store.claim(key)
        h = lm.submit(GenerationRequest(prompt, 50, GREEDY, keep=True, owner="A"))
        done = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()

        def finished(handle: RequestHandle) -> None:
            store.release(key, handle.saved)
            loop.call_soon_threadsafe(done.set_result, None)

        h.add_done_callback(finished)
        await asyncio.sleep(0.05)
        h.fail(Timeout("cut"))
        with pytest.raises(Timeout):
            await drain(h)
        try:
            store.claim(key)
            busy = False
        except IdBusy:
            busy = True
        await done
        return busy, store.claim(key)

    busy, kept = asyncio.run(main())
    assert busy  # the reader was let go, but the engine still had the id
    assert kept is not None
    assert history(kept)[: len(prompt)] == tuple(prompt)  # the whole prompt, nothing lost


# ---- UTF-8 characters cut at a continuation boundary ------------------------------------


def test_a_character_cut_at_the_boundary_carries_over(lm: LoadedModel) -> None:
    # SmolLM2 spells Greek letters with byte tokens: a character often spans two tokens.
    prompt = lm.tokenize("Ελληνικά: καλημέρα και")
    n = 8
    whole, _ = one(lm, GenerationRequest(prompt, n, GREEDY))
    ids = history_ids(lm, prompt, n)
    pieces = [lm.model.piece(t) for t in ids]
    cut = next((k for k in range(1, len(ids)) if _incomplete(b"".join(pieces[:k]))), None)
    if cut is None:
        pytest.skip("the model wrote no character spanning two tokens")
    first, h1 = one(lm, GenerationRequest(prompt, cut, GREEDY, keep=True))
    assert h1.saved is not None and h1.saved.tail  # the cut character's first bytes
    assert not first.endswith("\ufffd")
    second, _ = one(lm, GenerationRequest([], n - cut, GREEDY, resume=h1.saved, keep=True))
    assert first + second == whole


def history_ids(lm: LoadedModel, prompt: list[int], n: int) -> list[int]:
    async def main() -> list[int]:
        return (await drain(lm.submit(GenerationRequest(prompt, n, GREEDY))))[1]

    return asyncio.run(main())


def _incomplete(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(data) - 3 and exc.reason == "unexpected end of data"
    return False


# ---- row 2 and per-sequence failures --------------------------------------------------


@pytest.mark.parametrize("penalty", [1000.0, -1100.0, 1e308])
def test_any_length_penalty_scores_without_overflow(lm: LoadedModel, penalty: float) -> None:
    prompt = lm.tokenize("The three primary colors are")
    other = lm.tokenize("Water boils at")
    alone, _ = one(lm, GenerationRequest(other, 12, GREEDY))
    results = run(
        lm,
        GenerationRequest(prompt, 12, GREEDY, beams=BeamParams(2, penalty)),
        GenerationRequest(other, 12, GREEDY),
    )
    assert results[0][1].finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert results[1][0] == alone


def test_a_failing_sequence_fails_alone(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception in one sequence's logprobs ends that request only; the other runs on."""
    real = scheduler_module.token_logprob

    def broken(logits, token, top):  # type: ignore[no-untyped-def]
        if top == 7:
            raise RuntimeError("injected failure in one sequence")
        return real(logits, token, top)

    other = lm.tokenize("Water boils at")
    alone, _ = one(lm, GenerationRequest(other, 16, GREEDY))
    monkeypatch.setattr(scheduler_module, "token_logprob", broken)

    async def main() -> tuple[BaseException | None, str]:
        bad = lm.submit(GenerationRequest(lm.tokenize("Hello"), 16, GREEDY, logprobs=7))
        good = lm.submit(GenerationRequest(other, 16, GREEDY))
        results = await asyncio.gather(drain(bad), drain(good), return_exceptions=True)
        err = results[0] if isinstance(results[0], BaseException) else None
        assert not isinstance(results[1], BaseException), results[1]
        return err, results[1][0]

    err, text = asyncio.run(main())
    assert isinstance(err, EdgedError)
    assert text == alone
    assert lm.generator().busy_slots == 0


# ---- fairness between API keys -----------------------------------------------------------


def test_admission_round_robins_between_owners(model_path: Path) -> None:
    m = LoadedModel("fair", model_path, EngineOptions(ctx_size=256, parallel=1, max_queue=16))
    try:
        order: list[str] = []

        async def main() -> None:
            reqs = [("A", f"Story number {i}:") for i in range(5)] + [("B", "A poem:")]
            hs = []
            for owner, text in reqs:
                h = m.submit(GenerationRequest(m.tokenize(text), 8, GREEDY, owner=owner))
                h.add_done_callback(lambda h, o=owner: order.append(o))
                hs.append(h)
            await asyncio.gather(*(drain(h) for h in hs))

        asyncio.run(main())
        # FIFO would run all of A's burst first; round-robin lets B in within two turns.
        assert order.index("B") <= 2, order
    finally:
        m.close()


def test_per_owner_concurrency_limit(model_path: Path) -> None:
    opts = EngineOptions(ctx_size=256, parallel=3, max_queue=16, max_per_key=1)
    m = LoadedModel("capped", model_path, opts)
    try:
        ends: dict[int, float] = {}
        starts: dict[int, float] = {}

        async def main() -> None:
            hs = [
                m.submit(GenerationRequest(m.tokenize(f"Item {i}:"), 6, GREEDY, owner="A"))
                for i in range(3)
            ]
            for i, h in enumerate(hs):
                h.add_done_callback(lambda h, i=i: ends.__setitem__(i, time.monotonic()))
            await asyncio.gather(*(drain(h) for h in hs))
            for i, h in enumerate(hs):
                assert h.first_token_at is not None
                starts[i] = h.first_token_at

        asyncio.run(main())
        # One at a time for key A although three slots were free.
        assert starts[1] >= ends[0] and starts[2] >= ends[1]
    finally:
        m.close()


# ---- liveness ----------------------------------------------------------------------------


def test_watchdog_counts_a_decode_in_progress_as_alive(lm: LoadedModel) -> None:
    w = lm.worker
    now = time.monotonic()
    assert w.healthy(now, stale_after=5.0, hung_after=60.0)
    w.decode_started = now - 30.0  # inside one long prefill step for 30 s
    w.last_beat = now - 30.0
    try:
        assert w.healthy(now, stale_after=5.0, hung_after=60.0)
        assert not w.healthy(now + 40.0, stale_after=5.0, hung_after=60.0)  # hung
    finally:
        w.decode_started = None
        w.last_beat = time.monotonic()


def test_the_batch_holds_every_slot_even_below_parallel(model_path: Path) -> None:
    """--batch-size below --parallel: the engine still never writes past the batch."""
    opts = EngineOptions(ctx_size=256, parallel=4, batch_size=2, ubatch_size=2, max_queue=8)
    m = LoadedModel("small-batch", model_path, opts)
    try:
        reqs = [GenerationRequest(m.tokenize(f"Number {i} is"), 6, GREEDY) for i in range(4)]
        results = run(m, *reqs)
        assert all(h.finish_reason is FinishReason.LENGTH for _, h in results)
    finally:
        m.close()


def test_a_closed_model_refuses_calls(model_path: Path) -> None:
    m = LoadedModel("closing", model_path, EngineOptions(ctx_size=256, parallel=1))
    m.close()
    with pytest.raises(EdgedError):
        m.tokenize("hello")
    with pytest.raises(EdgedError):
        m.generator()
