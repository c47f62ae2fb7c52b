"""The engine on the real SmolLM2 GGUF, without HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.engine.errors import QueueFull
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import FinishReason, GenerationRequest, SamplingParams
from tests.integration.modes import MODES

GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module", params=sorted(MODES))
def lm(model_path: Path, request: pytest.FixtureRequest) -> Iterator[LoadedModel]:
    opts = EngineOptions(ctx_size=1024, parallel=4, max_queue=8, **MODES[request.param])
    m = LoadedModel("smol", model_path, opts)
    yield m
    m.close()


async def run(handle: RequestHandle) -> tuple[str, FinishReason]:
    text = []
    reason = None
    async for c in handle.chunks():
        text.append(c.text)
        reason = c.finish_reason
    assert reason is not None
    return "".join(text), reason


def gen(lm: LoadedModel, prompt: str, n: int, **kw: object) -> GenerationRequest:
    return GenerationRequest(lm.tokenize(prompt), n, SamplingParams(**kw))  # type: ignore[arg-type]


def test_greedy_paris(lm: LoadedModel) -> None:
    async def main() -> tuple[str, FinishReason]:
        return await run(lm.submit(gen(lm, "Q: The capital of France is?\nA:", 1, temperature=0)))

    assert asyncio.run(main()) == (" Paris", FinishReason.LENGTH)


def test_concurrent_requests_share_decode_steps(lm: LoadedModel) -> None:
    """Four 24-token requests take about 24 decode steps together, not 96."""

    async def main() -> list[tuple[str, FinishReason]]:
        before = lm.scheduler.steps
        hs = [lm.submit(gen(lm, f"List {i} fruits:", 24, temperature=0)) for i in range(4)]
        out = await asyncio.gather(*(run(h) for h in hs))
        steps = lm.scheduler.steps - before
        assert steps < 40, steps
        return out

    results = asyncio.run(main())
    assert all(r == FinishReason.LENGTH for _, r in results)

    async def alone() -> str:
        return (await run(lm.submit(gen(lm, "List 2 fruits:", 24, temperature=0))))[0]

    # Greedy output does not depend on what else was in the batch.
    assert asyncio.run(alone()) == results[2][0]


def test_prefix_cache_reuses_shared_history(lm: LoadedModel) -> None:
    history = "You are a poet. " * 40

    async def main() -> tuple[int, int]:
        h1 = lm.submit(gen(lm, history + "Write about the sea.", 4, temperature=0))
        await run(h1)
        h2 = lm.submit(gen(lm, history + "Write about the sky.", 4, temperature=0))
        await run(h2)
        return h2.usage.cached_tokens, h2.usage.prompt_tokens

    cached, total = asyncio.run(main())
    assert cached >= len(lm.tokenize(history)) - 2
    assert cached < total


def test_cancel_frees_slot(lm: LoadedModel) -> None:
    async def main() -> None:
        h = lm.submit(gen(lm, "Tell me a very long story.", 500, temperature=0.7))
        async for _ in h.chunks():
            break
        h.cancel()
        for _ in range(200):
            if lm.scheduler.outstanding == 0:
                break
            await asyncio.sleep(0.01)
        assert lm.scheduler.outstanding == 0
        assert lm.scheduler.busy_slots == 0

    asyncio.run(main())


def test_queue_bound_gives_overloaded(model_path: Path) -> None:
    small = LoadedModel("tiny", model_path, EngineOptions(ctx_size=256, parallel=1, max_queue=1))
    try:

        async def main() -> None:
            a = small.submit(gen(small, "Count:", 50, temperature=0))
            b = small.submit(gen(small, "Count:", 5, temperature=0))
            with pytest.raises(QueueFull):
                small.submit(gen(small, "Count:", 5, temperature=0))
            a.cancel()
            assert (await run(b))[1] == FinishReason.LENGTH

        asyncio.run(main())
    finally:
        small.close()


def test_stop_and_eos(lm: LoadedModel) -> None:
    async def main() -> tuple[str, FinishReason]:
        req = GenerationRequest(lm.tokenize("1, 2, 3, 4,"), 20, GREEDY, stop=(" 7",))
        return await run(lm.submit(req))

    text, reason = asyncio.run(main())
    assert reason == FinishReason.STOP
    assert text.rstrip().endswith("6,")


@pytest.mark.parametrize("type_k", ["q8_0", "q4_0"])
def test_quantized_key_cache_generates_and_shrinks_memory(model_path: Path, type_k: str) -> None:
    """A quantized key cache generates, and the memory estimate follows the type. q8_0 keys
    keep the greedy answer; q4_0 keys are too coarse for this 135M model (it answers " No")."""
    opts = EngineOptions(ctx_size=512, parallel=2, cache_type_k=type_k)  # type: ignore[arg-type]
    q = LoadedModel("smol-q", model_path, opts)
    f16 = LoadedModel("smol-f", model_path, EngineOptions(ctx_size=512, parallel=2))
    try:

        async def main() -> tuple[str, FinishReason]:
            return await run(q.submit(gen(q, "Q: The capital of France is?\nA:", 1, temperature=0)))

        text, reason = asyncio.run(main())
        assert reason is FinishReason.LENGTH and text.strip()
        if type_k == "q8_0":
            assert text == " Paris"
        kv = q.memory_bytes - q.model.size_bytes
        kv16 = f16.memory_bytes - f16.model.size_bytes
        ratio = {"q8_0": (34 / 32 + 2) / 4, "q4_0": (18 / 32 + 2) / 4}[type_k]
        assert kv == pytest.approx(kv16 * ratio, rel=1e-6)
    finally:
        q.close()
        f16.close()


def test_batch_rows_are_in_sequence_order(lm: LoadedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests that land in slots out of admission order still decode in ascending sequence
    id: llama.cpp splits an out-of-order batch over per-sequence KV streams (~25 % slower)."""
    sch = lm.scheduler
    assert sch is not None
    seen: list[list[int]] = []
    real = sch.ctx.decode

    def spy(batch):  # type: ignore[no-untyped-def]
        seen.append([batch.raw.seq_id[i][0] for i in range(batch.n_tokens)])
        return real(batch)

    topics = ["apples", "rivers", "violins", "comets"]

    async def round_(order: list[str]) -> list[str]:
        hs = [
            lm.submit(gen(lm, f"A long list of facts about {t}:", 6, temperature=0)) for t in order
        ]
        return [text for text, _ in await asyncio.gather(*(run(h) for h in hs))]

    first = asyncio.run(round_(topics))
    monkeypatch.setattr(sch.ctx, "decode", spy)
    # Reversed: each prompt goes back to the slot holding its prefix, so admission order is
    # the reverse of slot order.
    again = asyncio.run(round_(topics[::-1]))
    # Same texts would also show the prefix reuse exact, but on CPUs without AVX-512 the
    # pinned llama.cpp's greedy output of a batch varies run to run (main included), so this
    # test holds what it is about: the row order.
    assert len(again) == len(first)
    decode_steps = [s for s in seen if len(s) == len(set(s)) == len(topics)]
    assert decode_steps, seen
    assert all(s == sorted(s) for s in seen), seen
