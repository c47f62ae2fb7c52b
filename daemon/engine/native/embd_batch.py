"""Embedding rows (an image's, encoded by a projector or kept in a cache) decoded into a
sequence in place of token embeddings: a llama_batch of rows instead of token ids.

Needs no projector: the scheduler decodes cached embeddings with it."""

from __future__ import annotations

import ctypes

import numpy as np

from daemon.engine.errors import GenerationFailed
from daemon.engine.native.llama import Context, lc


def decode_rows(
    ctx: Context,
    embd: np.ndarray,
    n_past: int,
    seq: int,
    n_batch: int,
    *,
    non_causal: bool,
    positions: np.ndarray | None = None,
) -> None:
    """Decode embedding rows into sequence `seq` at positions n_past.. in batches of n_batch
    (no logits kept), or, for an M-RoPE model, at `positions` (4 sections × rows, absolute).
    Needs no projector: the scheduler decodes cached embeddings with it."""
    rows = np.ascontiguousarray(embd, dtype=np.float32)
    if positions is not None and positions.shape != (4, len(rows)):
        raise ValueError(f"positions {positions.shape} do not place {len(rows)} rows")
    if non_causal and min(n_batch, ctx.n_ubatch) < len(rows):
        # llama.cpp aborts the process on a bidirectional batch split into micro-batches.
        raise ValueError(f"a bidirectional image of {len(rows)} tokens needs one micro-batch")
    if non_causal:
        lc.llama_set_causal_attn(ctx.ptr, False)
    try:
        sections = 1 if positions is None else len(positions)
        with EmbeddingBatch(min(n_batch, len(rows)), rows.shape[1], sections) as batch:
            for start in range(0, len(rows), n_batch):
                part = slice(start, start + n_batch)
                if positions is None:
                    batch.fill(rows[part], n_past + start, seq)
                else:
                    batch.fill(rows[part], positions[:, part], seq)
                rc = lc.llama_decode(ctx.ptr, batch.raw)
                if rc != 0:
                    raise GenerationFailed(f"llama_decode of image embeddings returned {rc}")
    finally:
        if non_causal:
            lc.llama_set_causal_attn(ctx.ptr, True)


class EmbeddingBatch:
    """A llama_batch of embedding rows (no token ids) for one sequence, with one position
    per row, or `sections` (4 for M-RoPE) laid out section after section."""

    def __init__(self, capacity: int, n_embd: int, sections: int = 1) -> None:
        self.raw = lc.llama_batch_init(capacity, n_embd, 1)
        self.capacity = capacity
        self.n_embd = n_embd
        self._own_pos: int | None = None  # the address of llama_batch_init's own `pos`
        self._pos_buf: np.ndarray | None = None
        if sections > 1:
            # llama_batch_init sizes `pos` for one position a row: M-RoPE reads `sections`
            # times as many, so the batch points at a buffer of ours while it lives.
            self._pos_buf = np.zeros(capacity * sections, dtype=np.int32)
            # An address, not the field's pointer object, which reads the field as it is now.
            self._own_pos = ctypes.cast(self.raw.pos, ctypes.c_void_p).value
            self.raw.pos = self._pos_buf.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))

    def fill(self, rows: np.ndarray, pos: int | np.ndarray, seq: int) -> None:
        """Put rows (n, n_embd float32, contiguous) at positions pos.. of seq (or at
        `pos`, sections × n, for M-RoPE); no logits."""
        n = len(rows)
        if n > self.capacity:
            raise IndexError(f"the batch holds at most {self.capacity} rows")
        raw = self.raw
        ctypes.memmove(raw.embd, rows.ctypes.data, rows.nbytes)
        if isinstance(pos, np.ndarray):
            assert self._pos_buf is not None, "a batch of one position a row"
            self._pos_buf[: pos.size] = pos.reshape(-1)  # section-major, as n_tokens = n
        else:
            for i in range(n):
                raw.pos[i] = pos + i
        for i in range(n):
            raw.n_seq_id[i] = 1
            raw.seq_id[i][0] = seq
            raw.logits[i] = False
        raw.n_tokens = n

    def close(self) -> None:
        """Free the batch arrays."""
        if self.raw is not None:
            if self._own_pos is not None:  # llama_batch_free frees what `pos` points at
                self.raw.pos = ctypes.cast(self._own_pos, ctypes.POINTER(ctypes.c_int32))
            lc.llama_batch_free(self.raw)
            self.raw = None

    def __enter__(self) -> EmbeddingBatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
