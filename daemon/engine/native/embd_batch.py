"""Embedding rows (an image's, encoded by a projector or kept in a cache) decoded into a
sequence in place of token embeddings: a llama_batch of rows instead of token ids.

Needs no projector: the scheduler decodes cached embeddings with it."""

from __future__ import annotations

import ctypes

import numpy as np

from daemon.engine.errors import GenerationFailed
from daemon.engine.native.llama import Context, lc


def decode_rows(
    ctx: Context, embd: np.ndarray, n_past: int, seq: int, n_batch: int, *, non_causal: bool
) -> None:
    """Decode embedding rows into sequence `seq` at positions n_past.. in batches of n_batch
    (no logits kept). Needs no projector: the scheduler decodes cached embeddings with it."""
    rows = np.ascontiguousarray(embd, dtype=np.float32)
    if non_causal and n_batch < len(rows):
        raise ValueError(f"a bidirectional image of {len(rows)} tokens needs one batch")
    if non_causal:
        lc.llama_set_causal_attn(ctx.ptr, False)
    try:
        with EmbeddingBatch(min(n_batch, len(rows)), rows.shape[1]) as batch:
            for start in range(0, len(rows), n_batch):
                batch.fill(rows[start : start + n_batch], n_past + start, seq)
                rc = lc.llama_decode(ctx.ptr, batch.raw)
                if rc != 0:
                    raise GenerationFailed(f"llama_decode of image embeddings returned {rc}")
    finally:
        if non_causal:
            lc.llama_set_causal_attn(ctx.ptr, True)


class EmbeddingBatch:
    """A llama_batch of embedding rows (no token ids) for one sequence."""

    def __init__(self, capacity: int, n_embd: int) -> None:
        self.raw = lc.llama_batch_init(capacity, n_embd, 1)
        self.capacity = capacity
        self.n_embd = n_embd

    def fill(self, rows: np.ndarray, pos0: int, seq: int) -> None:
        """Put rows (n, n_embd float32, contiguous) at positions pos0.. of seq; no logits."""
        n = len(rows)
        if n > self.capacity:
            raise IndexError(f"the batch holds at most {self.capacity} rows")
        raw = self.raw
        ctypes.memmove(raw.embd, rows.ctypes.data, rows.nbytes)
        for i in range(n):
            raw.pos[i] = pos0 + i
            raw.n_seq_id[i] = 1
            raw.seq_id[i][0] = seq
            raw.logits[i] = False
        raw.n_tokens = n

    def close(self) -> None:
        """Free the batch arrays."""
        if self.raw is not None:
            lc.llama_batch_free(self.raw)
            self.raw = None

    def __enter__(self) -> EmbeddingBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
