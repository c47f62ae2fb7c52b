"""Greedy tokens of a chat with one medium, computed without the daemon: the reference the
HTTP tests compare the daemon's answers with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from daemon.engine.loading.loaded import chat_template
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model
from daemon.engine.native.mtmd import Projector, ProjectorOptions
from tests.media.conftest import CTX, N_BATCH, PARALLEL


def reference_tokens(
    lm_path: Path, mmproj: Path, content: str, medium: bytes, steps: int
) -> list[int]:
    """Greedy tokens after a one-message chat whose `content` holds one media marker for
    `medium` (an image or audio file): the model's template, libmtmd's own eval_chunks, a
    plain one-token decode loop (flash attention off)."""
    model = Model(lm_path)
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
        try:
            rendered = chat_template(model).render(
                [{"role": "user", "content": content}], add_generation_prompt=True
            )
            bos = model.special_text(model.bos) if model.add_bos else ""
            add_special = model.add_bos and not (bos and rendered.startswith(bos))
            with (
                proj.bitmap_file_bytes(medium) as bitmap,
                proj.tokenize(rendered, [bitmap], add_special=add_special) as chunks,
            ):
                n_past = proj.eval_chunks(ctx, chunks, 0, 0, N_BATCH)
            row, out = -1, []
            for _ in range(steps):
                tok = int(np.argmax(ctx.logits_np(row)))
                if model.is_eog(tok):
                    break
                out.append(tok)
                batch.clear()
                batch.add(tok, n_past, 0, True)
                assert ctx.decode(batch) == 0
                n_past, row = n_past + 1, 0
            return out
        finally:
            batch.close()
            ctx.close()
            proj.close()
    finally:
        model.close()
