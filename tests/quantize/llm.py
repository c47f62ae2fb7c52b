"""Test helper: load a GGUF with llama.cpp's low-level API; greedy-decode, tokenize and embed."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import numpy as np
from llama_cpp import _logger

llama_cpp.llama_backend_init()
_logger.set_verbose(False)  # llama.cpp's per-load chatter drowns pytest's output


@contextlib.contextmanager
def load(
    path: Path, embeddings: bool = False, n_ctx: int = 512, exact: bool = False
) -> Iterator[tuple[object, object]]:
    """Yield (model, context); both freed on exit. exact: F32 KV cache, no flash attention."""
    mp = llama_cpp.llama_model_default_params()
    # The CPU weight-repacking buffers (AMX/"extra" buffer types) of this llama.cpp build crash on
    # quantized weights on this machine's CPU; plain CPU buffers compute the same model.
    mp.use_extra_bufts = False
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), mp)
    assert model, f"llama.cpp could not load {path}"
    cp = llama_cpp.llama_context_default_params()
    cp.n_ctx = n_ctx
    cp.n_batch = n_ctx
    cp.n_ubatch = n_ctx
    cp.n_threads = cp.n_threads_batch = 2
    cp.embeddings = embeddings
    if exact:  # the CPU flash-attention kernel rounds through F16 (5e-4 relative on logits)
        cp.type_k = cp.type_v = llama_cpp.GGML_TYPE_F32
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, cp)
    assert ctx, f"llama.cpp could not create a context for {path}"
    try:
        yield model, ctx
    finally:
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def tokenize(model: object, text: str, add_special: bool) -> list[int]:
    """llama.cpp's tokenization of text."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    raw = text.encode()
    buf = (llama_cpp.llama_token * (len(raw) + 8))()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), add_special, True)
    assert n >= 0
    return list(buf[:n])


def _decode(ctx: object, tokens: list[int]) -> None:
    arr = (llama_cpp.llama_token * len(tokens))(*tokens)
    rc = llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
    assert rc == 0, f"llama_decode returned {rc}"


def greedy(path: Path, prompts: list[str], n_tokens: int) -> list[list[int]]:
    """Token ids of a greedy continuation of each prompt (one model load for all)."""
    results: list[list[int]] = []
    with load(path) as (model, ctx):
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        for prompt in prompts:
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            out: list[int] = []
            step = tokenize(model, prompt, add_special=True)
            for _ in range(n_tokens):
                _decode(ctx, step)
                logits = np.ctypeslib.as_array(
                    llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)
                )
                tok = int(np.argmax(logits))
                out.append(tok)
                step = [tok]
            results.append(out)
    return results


def piece(path: Path, tokens: list[int]) -> str:
    """Detokenized text of token ids."""
    with load(path, n_ctx=64) as (model, _ctx):
        vocab = llama_cpp.llama_model_get_vocab(model)
        text = b""
        buf = ctypes.create_string_buffer(256)
        for tok in tokens:
            n = llama_cpp.llama_token_to_piece(vocab, tok, buf, len(buf), 0, False)
            text += buf.raw[:n]
        return text.decode(errors="replace")


def embed(path: Path, text: str) -> tuple[list[int], np.ndarray]:
    """(token ids, pooled embedding) of text from an embedding model."""
    with load(path, embeddings=True) as (model, ctx):
        tokens = tokenize(model, text, add_special=True)
        arr = (llama_cpp.llama_token * len(tokens))(*tokens)
        rc = llama_cpp.llama_encode(ctx, llama_cpp.llama_batch_get_one(arr, len(tokens)))
        assert rc == 0, f"llama_encode returned {rc}"
        n_embd = llama_cpp.llama_model_n_embd(model)
        ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
        assert ptr, "no pooled embedding"
        return tokens, np.ctypeslib.as_array(ptr, shape=(n_embd,)).copy()


def all_logits(path: Path, tokens: list[int]) -> np.ndarray:
    """Logits of every position of tokens, decoded as one batch: (len(tokens), n_vocab)."""
    with load(path, n_ctx=64, exact=True) as (model, ctx):
        n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        batch = llama_cpp.llama_batch_init(len(tokens), 0, 1)
        try:
            batch.n_tokens = len(tokens)
            for i, tok in enumerate(tokens):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, i, 1
                batch.seq_id[i][0], batch.logits[i] = 0, 1
            rc = llama_cpp.llama_decode(ctx, batch)
            assert rc == 0, f"llama_decode returned {rc}"
            return np.stack(
                [
                    np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                    for i in range(len(tokens))
                ]
            ).astype(np.float64)
        finally:
            llama_cpp.llama_batch_free(batch)
