"""The engine's Embedder without HTTP: batching, packing, order and input checks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from daemon.config import embedded_model_path
from daemon.engine.embed.embeddings import Embedder, embedding_pooling, truncate
from daemon.engine.errors import ContextOverflow, InvalidInput, ModelUnavailable
from daemon.engine.loading.loaded import EngineOptions
from daemon.engine.native.llama import ContextOptions, Model, Pooling

TEXTS = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on a small stage tonight.",
    "The stock market fell sharply today.",
    "hi",
    "Vectors of similar sentences land close together.",
    "Paris is the capital of France.",
    "Embeddings are pooled and normalized.",
    "One more sentence to fill a second batch.",
]


@pytest.fixture(scope="module")
def model(embed_models_dir: Path) -> Iterator[Model]:
    m = Model(embed_models_dir / "minilm-f16.gguf")
    yield m
    m.close()


def _embedder(model: Model, n_seq: int = 4, n_batch: int = 128) -> Embedder:
    options = ContextOptions(
        n_ctx=128 * n_seq,
        n_batch=n_batch,
        n_ubatch=n_batch,
        n_seq_max=n_seq,
        n_threads=2,
        n_threads_batch=2,
        embeddings=True,
    )
    return Embedder(model, options, max_tokens=128, max_queue=16, name="minilm")


@pytest.fixture(scope="module")
def embedder(model: Model) -> Iterator[Embedder]:
    e = _embedder(model)
    yield e
    e.close()


def _tokens(model: Model, texts: list[str]) -> list[list[int]]:
    return [model.tokenize(t, add_special=True, parse_special=False) for t in texts]


def _alone(embedder: Embedder, inputs: list[list[int]]) -> list[np.ndarray]:
    return [asyncio.run(embedder.embed([t]))[0] for t in inputs]


def test_minilm_is_an_embedding_model(model: Model, embedded_default: Model) -> None:
    assert embedding_pooling(model) == Pooling.MEAN
    assert embedding_pooling(embedded_default) is None


def test_vectors_are_unit_length_and_distinct(model: Model, embedder: Embedder) -> None:
    a, b, c = asyncio.run(embedder.embed(_tokens(model, TEXTS[:3])))
    for v in (a, b, c):
        assert v.shape == (model.n_embd,) and v.dtype == np.float32
        assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5
    assert float(a @ b) > float(a @ c) + 0.2  # a paraphrase lands closer than an unrelated line


def test_one_request_is_one_decode(model: Model, embedder: Embedder) -> None:
    before = embedder.steps
    asyncio.run(embedder.embed(_tokens(model, TEXTS[:4])))
    assert embedder.steps - before == 1


def test_packing_respects_slots_and_token_budget(model: Model) -> None:
    """8 inputs over 4 sequence slots take two decodes; a 32-token budget takes more."""
    inputs = _tokens(model, TEXTS)
    min_narrow = -(-sum(map(len, inputs)) // 32)
    assert min_narrow > 2
    wide = _embedder(model, n_seq=4, n_batch=128)
    narrow = _embedder(model, n_seq=4, n_batch=32)
    try:
        alone = _alone(wide, inputs)
        for e, at_least, at_most in ((wide, 2, 2), (narrow, min_narrow, len(inputs))):
            before = e.steps
            together = asyncio.run(e.embed(inputs))
            assert at_least <= e.steps - before <= at_most
            for x, y in zip(together, alone, strict=True):
                assert float(x @ y) > 0.9999
    finally:
        wide.close()
        narrow.close()


def test_concurrent_requests_batch_together(model: Model, embedder: Embedder) -> None:
    inputs = _tokens(model, TEXTS)
    alone = _alone(embedder, inputs)

    async def concurrently() -> list[list[np.ndarray]]:
        return await asyncio.gather(*(embedder.embed([t]) for t in inputs))

    before = embedder.steps
    results = asyncio.run(concurrently())
    # 8 requests over 4 slots: two decodes when all arrive together, never one per request.
    assert embedder.steps - before < len(inputs)
    assert embedder.outstanding == 0
    for (x,), y in zip(results, alone, strict=True):
        assert float(x @ y) > 0.9999


def test_input_checks(model: Model, embedder: Embedder) -> None:
    with pytest.raises(InvalidInput):
        asyncio.run(embedder.embed([]))
    with pytest.raises(InvalidInput):
        asyncio.run(embedder.embed([[101, 102], []]))
    with pytest.raises(InvalidInput):
        asyncio.run(embedder.embed([[101, model.n_vocab, 102]]))
    with pytest.raises(ContextOverflow):
        asyncio.run(embedder.embed([[101] + [1037] * 200 + [102]]))
    # The worker lives on: a good request after the bad ones still works.
    (v,) = asyncio.run(embedder.embed(_tokens(model, ["still alive"])))
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5


def test_truncate_renormalizes() -> None:
    v = np.array([3.0, 4.0, 12.0], dtype=np.float32) / 13.0
    t = truncate(v, 2)
    assert np.allclose(t, [0.6, 0.8])
    assert truncate(v, None) is v and truncate(v, 3) is v


@pytest.fixture(scope="module")
def embedded_default() -> Iterator[Model]:
    m = Model(embedded_model_path())
    yield m
    m.close()


def test_close_answers_queued_inputs(model: Model) -> None:
    """Unloading fails what is still queued with a 503-class error instead of hanging it."""
    e = _embedder(model, n_seq=1, n_batch=32)

    async def run() -> None:
        task = asyncio.ensure_future(e.embed(_tokens(model, TEXTS)))  # 8 decodes, one each
        await asyncio.sleep(0)
        await asyncio.to_thread(e.close)
        with pytest.raises(ModelUnavailable):
            await asyncio.wait_for(task, 30)
        with pytest.raises(ModelUnavailable):
            await e.embed(_tokens(model, ["after close"]))

    asyncio.run(run())
    assert not e.alive


def test_flash_attention_default_for_encoders(model: Model) -> None:
    """Unset, `flash_attn` means on for encoder contexts (generation keeps it off); `False`
    turns it off there too. The two kernels round differently, so the vectors tell which ran."""
    base = EngineOptions(parallel=4, threads=2)
    inputs = _tokens(model, TEXTS[:4])
    out = {}
    for fa in (None, True, False):
        e = Embedder.for_model(model, Pooling.MEAN, 128, replace(base, flash_attn=fa), "m")
        try:
            out[fa] = np.stack(asyncio.run(e.embed(inputs)))
        finally:
            e.close()
    assert np.array_equal(out[None], out[True])
    assert not np.array_equal(out[None], out[False])
    assert np.allclose(out[None], out[False], atol=5e-4)
