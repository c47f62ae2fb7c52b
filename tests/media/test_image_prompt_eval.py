"""A prompt with an image evaluates into a context with the text model, and greedy decoding
after it equals decoding after the same embeddings fed by hand (native/mtmd.py's
EmbeddingBatch path, the one a scheduler interleaves with text streams)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.engine.native.llama import Batch, Context, ContextOptions, Model
from daemon.engine.native.mtmd import Chunks, ChunkType, Projector, ProjectorOptions
from tests.media.tiny_vlm import sample_image

N_BATCH = 16  # smaller than the prompt's first text run: text is split across decodes too
STEPS = 8
PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\n{marker}What is in this picture?<|im_end|>\n<|im_start|>assistant\n"
)


def _context(model: Model) -> Context:
    opts = ContextOptions(
        n_ctx=256, n_batch=N_BATCH, n_ubatch=N_BATCH, n_seq_max=1, n_threads=1, n_threads_batch=1
    )
    return Context(model, opts)


@pytest.fixture
def chunks(projector: Projector) -> Iterator[Chunks]:
    with projector.bitmap_rgb(sample_image().tobytes(), 32, 32) as bitmap:
        prompt = PROMPT.format(marker=projector.marker)
        with projector.tokenize(prompt, [bitmap], add_special=True) as c:
            yield c


def _greedy(ctx: Context, n_past: int, row: int) -> tuple[list[int], np.ndarray]:
    """STEPS greedy tokens from the logits in batch row `row`, and every step's logits."""
    tokens, logits = [], []
    batch = Batch(1)
    try:
        for _ in range(STEPS):
            step = ctx.logits_np(row).copy()
            tokens.append(int(np.argmax(step)))
            logits.append(step)
            batch.clear()
            batch.add(tokens[-1], n_past, 0, True)
            assert ctx.decode(batch) == 0
            n_past, row = n_past + 1, 0
    finally:
        batch.close()
    return tokens, np.stack(logits)


def _with_libmtmd(
    projector: Projector, model: Model, chunks: Chunks
) -> tuple[list[int], np.ndarray]:
    ctx = _context(model)
    try:
        n_past = projector.eval_chunks(ctx, chunks, 0, 0, N_BATCH)
        assert n_past == chunks.n_pos
        return _greedy(ctx, n_past, -1)
    finally:
        ctx.close()


def _by_hand(projector: Projector, model: Model, chunks: Chunks) -> tuple[list[int], np.ndarray]:
    """Text runs as token batches, images as their encoded embeddings in EmbeddingBatches."""
    ctx, batch = _context(model), Batch(N_BATCH)
    try:
        n_past, last_row = 0, -1
        for i, chunk in enumerate(chunks):
            if chunk.type == ChunkType.IMAGE:
                embd = projector.encode(chunk)
                n_past = projector.decode_embeddings(ctx, chunk, embd, n_past, 0, N_BATCH)
                continue
            tokens = chunk.text_tokens()
            for start in range(0, len(tokens), N_BATCH):
                batch.clear()
                for j, token in enumerate(tokens[start : start + N_BATCH], start):
                    last = i == len(chunks) - 1 and j == len(tokens) - 1
                    last_row = batch.add(token, n_past + j, 0, last)
                assert ctx.decode(batch) == 0
            n_past += len(tokens)
        assert chunks[-1].type == ChunkType.TEXT
        return _greedy(ctx, n_past, last_row)
    finally:
        batch.close()
        ctx.close()


def hand_fed_equals_libmtmd(lm_path: Path, mmproj: Path, image: bytes) -> tuple[int, int, bool]:
    """Load a model and projector, and check that decoding after PROMPT with `image` fed by
    hand equals libmtmd's own evaluation; the image chunk's (tokens, positions, whether the
    text model attends to it as a whole)."""
    model = Model(lm_path)
    try:
        with (
            Projector(model, mmproj, ProjectorOptions(n_threads=1, flash_attn=False)) as p,
            p.bitmap_file_bytes(image) as bitmap,
            p.tokenize(PROMPT.format(marker=p.marker), [bitmap], add_special=True) as chunks,
        ):
            chunk = next(c for c in chunks if c.type == ChunkType.IMAGE)
            shape = (chunk.n_tokens, chunk.n_pos, p.non_causal(chunk))
            tokens, logits = _with_libmtmd(p, model, chunks)
            hand_tokens, hand_logits = _by_hand(p, model, chunks)
    finally:
        model.close()
    assert tokens == hand_tokens
    assert np.abs(logits - hand_logits).max() < 1e-3
    return shape


def test_decoding_after_an_image_equals_the_hand_fed_embeddings(
    projector: Projector, vlm_lm: Model, chunks: Chunks
) -> None:
    assert [c.type for c in chunks].count(ChunkType.IMAGE) == 2
    tokens, logits = _with_libmtmd(projector, vlm_lm, chunks)
    hand_tokens, hand_logits = _by_hand(projector, vlm_lm, chunks)
    assert tokens == hand_tokens
    # Same batches, same kernels: identical up to float noise (measured 0.0).
    assert np.abs(logits - hand_logits).max() < 1e-3


def test_deterministic_across_fresh_contexts(
    projector: Projector, vlm_lm: Model, chunks: Chunks
) -> None:
    first, first_logits = _with_libmtmd(projector, vlm_lm, chunks)
    again, again_logits = _with_libmtmd(projector, vlm_lm, chunks)
    assert first == again
    assert np.array_equal(first_logits, again_logits)


def test_the_image_reaches_the_language_model(
    projector: Projector, vlm_lm: Model, chunks: Chunks
) -> None:
    """Another image, same text: the first logits after the prompt change."""
    _, logits = _with_libmtmd(projector, vlm_lm, chunks)
    other = sample_image(seed=11)
    with (
        projector.bitmap_rgb(other.tobytes(), 32, 32) as bitmap,
        projector.tokenize(
            PROMPT.format(marker=projector.marker), [bitmap], add_special=True
        ) as other_chunks,
    ):
        assert other_chunks.n_tokens == chunks.n_tokens
        _, other_logits = _with_libmtmd(projector, vlm_lm, other_chunks)
    assert np.abs(logits[0] - other_logits[0]).max() > 1e-2


def test_embeddings_must_fit_the_chunk(projector: Projector, vlm_lm: Model, chunks: Chunks) -> None:
    image = next(c for c in chunks if c.type == ChunkType.IMAGE)
    ctx = _context(vlm_lm)
    try:
        with pytest.raises(ValueError, match="embeddings"):
            projector.decode_embeddings(
                ctx, image, np.zeros((image.n_tokens + 1, projector.n_embd)), 0, 0, N_BATCH
            )
    finally:
        ctx.close()


def test_a_saved_sequence_with_an_image_restores(
    projector: Projector, vlm_lm: Model, chunks: Chunks
) -> None:
    """The KV state of a sequence holding image embeddings saves and loads like any other
    (what the prompt cache and request_id continuation store): decoding after a restore in a
    fresh context gives the same logits as decoding on in the original one."""
    ctx = _context(vlm_lm)
    try:
        n_past = projector.eval_chunks(ctx, chunks, 0, 0, N_BATCH)
        saved = ctx.state_get(0)
        tokens, logits = _greedy(ctx, n_past, -1)
    finally:
        ctx.close()
    fresh, batch = _context(vlm_lm), Batch(1)
    try:
        assert fresh.state_set(0, saved)
        batch.add(tokens[0], n_past, 0, True)
        assert fresh.decode(batch) == 0
        assert int(np.argmax(fresh.logits_np(0))) == tokens[1]
        assert np.abs(fresh.logits_np(0) - logits[1]).max() < 1e-3
    finally:
        batch.close()
        fresh.close()
