"""Greedy tokens of a chat with one medium, computed without the daemon: the reference the
HTTP tests compare the daemon's answers with."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from daemon.core.request import MEDIA_MARKER
from daemon.engine.loading.loaded import chat_template
from daemon.engine.native.llama import Adapter, Batch, Context, ContextOptions, Model
from daemon.engine.native.mtmd import ChunkType, Projector, ProjectorOptions
from tests.media.conftest import CTX, N_BATCH, PARALLEL


def reference_tokens(
    lm_path: Path, mmproj: Path, content: str, medium: bytes, steps: int
) -> list[int]:
    """Greedy tokens after a one-message chat whose `content` holds one media marker for
    `medium` (an image or audio file): the model's template, libmtmd's own eval_chunks, a
    plain one-token decode loop (flash attention off)."""
    return reference_chat(lm_path, mmproj, [{"role": "user", "content": content}], [medium], steps)


def reference_chat(
    lm_path: Path, mmproj: Path, messages: list[dict], media: list[bytes], steps: int
) -> list[int]:
    """Greedy tokens after a chat (string contents holding one media marker per medium, in
    order), computed as reference_tokens computes them."""
    return reference_greedy(lm_path, mmproj, messages, media, steps)[0]


def reference_greedy(
    lm_path: Path, mmproj: Path, messages: list[dict], media: list[bytes], steps: int
) -> tuple[list[int], list[float]]:
    """reference_chat's tokens and the log-probability of each (the model's own)."""
    return reference_raw(lm_path, mmproj, None, media, steps, messages)


def reference_raw(
    lm_path: Path,
    mmproj: Path,
    prompt: str | None,
    media: list[bytes],
    steps: int,
    messages: list[dict] | None = None,
    adapters: tuple[tuple[Path, float], ...] = (),
) -> tuple[list[int], list[float]]:
    """reference_greedy's tokens and log-probabilities after a raw `prompt` (no template;
    one media marker per medium), or after `messages` rendered by the model's template;
    every decode (the image's rows too) under LoRA `adapters` at their scales."""
    model = Model(lm_path)
    loras = [(Adapter(model, path), scale) for path, scale in adapters]
    try:
        proj = Projector(model, mmproj, ProjectorOptions(n_threads=1, flash_attn=False))
        opts = ContextOptions(
            n_ctx=CTX * PARALLEL,
            n_batch=N_BATCH,
            n_ubatch=N_BATCH,
            n_seq_max=PARALLEL,
            n_threads=1,
            n_threads_batch=1,
        )
        ctx, batch = Context(model, opts), Batch(1)
        ctx.set_adapters(loras)
        try:
            if prompt is None:
                assert messages is not None
                rendered, add_special = _rendered(model, messages)
            else:
                rendered, add_special = prompt, model.add_bos
            bitmaps = [proj.bitmap_file_bytes(m) for m in media]
            try:
                with proj.tokenize(rendered, bitmaps, add_special=add_special) as chunks:
                    n_past = proj.eval_chunks(ctx, chunks, 0, 0, N_BATCH)
            finally:
                for b in bitmaps:
                    b.close()
            row, out, logprobs = -1, [], []
            for _ in range(steps):
                logits = ctx.logits_np(row).astype(np.float64)
                tok = int(np.argmax(logits))
                if model.is_eog(tok):
                    break
                out.append(tok)
                top = logits.max()
                logprobs.append(float(logits[tok] - top - np.log(np.exp(logits - top).sum())))
                batch.clear()
                batch.add(tok, n_past, 0, True)
                assert ctx.decode(batch) == 0
                n_past, row = n_past + 1, 0
            return out, logprobs
        finally:
            batch.close()
            ctx.close()
            proj.close()
    finally:
        for a, _ in loras:
            a.close()
        model.close()


def _rendered(model: Model, messages: list[dict]) -> tuple[str, bool]:
    """The chat as the model's template renders it, and whether tokenizing adds BOS."""
    rendered = chat_template(model).render(messages, add_generation_prompt=True)
    bos = model.special_text(model.bos) if model.add_bos else ""
    return rendered, model.add_bos and not (bos and rendered.startswith(bos))


def chunk_sizes(
    lm_path: Path, mmproj: Path, messages: list[dict], media: list[bytes]
) -> list[tuple[ChunkType, int]]:
    """The (type, tokens) of each chunk libmtmd makes of a chat's prompt."""
    model = Model(lm_path)
    try:
        with Projector(model, mmproj, ProjectorOptions(n_threads=1)) as proj:
            rendered, add_special = _rendered(model, messages)
            bitmaps = [proj.bitmap_file_bytes(m) for m in media]
            try:
                with proj.tokenize(rendered, bitmaps, add_special=add_special) as chunks:
                    return [(c.type, c.n_tokens) for c in chunks]
            finally:
                for b in bitmaps:
                    b.close()
    finally:
        model.close()


def image_turn(image: bytes, text: str) -> dict:
    """An OpenAI user turn: the image (a PNG, as a data URL) first, then the text."""
    url = f"data:image/png;base64,{base64.b64encode(image).decode()}"
    return {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": text},
        ],
    }


def flat(messages: list[dict]) -> list[dict]:
    """OpenAI messages as the references render them: media markers in place of images."""
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, list):
            content = "".join(
                MEDIA_MARKER if p["type"] == "image_url" else p["text"] for p in content
            )
        out.append({"role": m["role"], "content": content})
    return out
