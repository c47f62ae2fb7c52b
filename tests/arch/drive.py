"""Driving the engine and a plain llama.cpp decode loop over the tiny architecture models."""

from __future__ import annotations

import asyncio
import ctypes
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as lc

from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.types import GenerationRequest, SamplingParams, SavedSequence

GREEDY = SamplingParams(temperature=0.0)
CTX = 512  # tokens per slot (the engine's ctx_size)


@dataclass
class Run:
    """What one request gave: its tokens, what it kept, prompt tokens taken from a cache."""

    tokens: list[int]
    saved: SavedSequence | None
    cached: int


async def _tokens(h: RequestHandle) -> list[int]:
    out: list[int] = []
    async for c in h.chunks():
        out.extend(c.token_ids)
    return out


def generate(lm: LoadedModel, req: GenerationRequest) -> Run:
    """One request alone."""

    async def main() -> Run:
        h = lm.submit(req)
        tokens = await _tokens(h)
        return Run(tokens, h.saved, h.usage.cached_tokens)

    return asyncio.run(main())


def together(lm: LoadedModel, reqs: list[GenerationRequest]) -> list[list[int]]:
    """Requests submitted at once (they share decode steps)."""

    async def main() -> list[list[int]]:
        hs = [lm.submit(r) for r in reqs]
        return [await _tokens(h) for h in hs]

    return asyncio.run(main())


def greedy(tokens: list[int], n: int, **kw: object) -> GenerationRequest:
    return GenerationRequest(list(tokens), n, GREEDY, **kw)  # type: ignore[arg-type]


def prompt(lm: LoadedModel, n: int, seed: int = 0) -> list[int]:
    """A prompt of exactly `n` tokens (words drawn by `seed`)."""
    words = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter"]
    text = " ".join(words[(seed * 3 + i * i) % len(words)] + str(i % 7) for i in range(n))
    return lm.tokenize(text)[:n]


def flush(lm: LoadedModel, slots: int) -> None:
    """Every slot takes an unrelated prompt at once (no token in common with `prompt`'s):
    what the test left in a slot goes to the prompt cache or away."""
    together(lm, [greedy(lm.tokenize(f"{i}# zq"), 2, owner="flush") for i in range(slots)])


def reference(path: Path, feeds: list[list[int]], n: int, *, flash_attn: bool) -> list[int]:
    """Greedy tokens of a plain llama.cpp loop on one fresh context: each of `feeds` decoded
    as one batch, in order, then one token per decode (a single feed is what llama-server
    does for one request; several replay the steps a warm slot took)."""
    lc.llama_backend_init()
    mp = lc.llama_model_default_params()
    model = lc.llama_model_load_from_file(str(path).encode(), mp)
    cp = lc.llama_context_default_params()
    cp.n_ctx = CTX
    cp.n_batch = cp.n_ubatch = 512
    cp.n_seq_max = 1
    cp.n_threads = cp.n_threads_batch = 2
    cp.kv_unified = False
    cp.flash_attn_type = (
        lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    ctx = lc.llama_init_from_model(model, cp)
    n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(512, 0, 1)
    out: list[int] = []
    try:
        pending, pos = [list(f) for f in feeds], 0
        while len(out) < n:
            feed = pending.pop(0) if pending else [out[-1]]
            batch.n_tokens = len(feed)
            for i, t in enumerate(feed):
                batch.token[i], batch.pos[i] = t, pos + i
                batch.n_seq_id[i], batch.seq_id[i][0] = 1, 0
                batch.logits[i] = i == len(feed) - 1
            assert lc.llama_decode(ctx, batch) == 0
            pos += len(feed)
            if pending:
                continue
            row = lc.llama_get_logits_ith(ctx, len(feed) - 1)
            logits = ctypes.cast(row, ctypes.POINTER(ctypes.c_float * n_vocab)).contents
            out.append(max(range(n_vocab), key=logits.__getitem__))
    finally:
        lc.llama_batch_free(batch)
        lc.llama_free(ctx)
        lc.llama_model_free(model)
    return out
