"""A tiny random Gemma 3 projector (a SigLIP encoder, its patches average-pooled, RMS-normed
and projected), written as llama.cpp's `convert_hf_to_gguf.py --mmproj` writes one.

What sets Gemma 3 apart in the engine: libmtmd has its text model attend to an image's
tokens bidirectionally, so an image is decoded in one llama_decode, which llama.cpp allows
only when the micro-batch (`--ubatch-size`) holds it whole. 32 × 32 pixels in 4 × 4 patches,
pooled 2 × 2: 16 tokens an image."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.media.tiny_weights import Init, VisionEncoder, encoder_blocks, vision_writer, write

HIDDEN = 32
FFN = 64
LAYERS = 2
HEADS = 2
IMAGE = 32
PATCH = 4
POOL = 2
TOKENS = (IMAGE // PATCH // POOL) ** 2


def write_mmproj(out: Path, text_hidden: int, seed: int = 0) -> Path:
    """An F32 `gemma3` mmproj whose encoder is tiny and random, into `text_hidden`."""
    init = Init(seed)
    h = HIDDEN
    tensors: dict[str, np.ndarray] = {
        "v.patch_embd.weight": init.mat(h, 3, PATCH, PATCH),
        "v.patch_embd.bias": init.vec(h),
        "v.position_embd.weight": init.normal((IMAGE // PATCH) ** 2, h),
    }
    tensors |= encoder_blocks(init, "v", LAYERS, h, FFN)
    tensors["v.post_ln.weight"] = init.vec(h, 1.0)
    tensors["v.post_ln.bias"] = init.vec(h)
    tensors["mm.soft_emb_norm.weight"] = init.vec(h, 1.0)
    # ggml multiplies by its transpose: numpy (vision width, text width).
    tensors["mm.input_projection.weight"] = init.mat(h, text_hidden)

    half = [0.5, 0.5, 0.5]
    enc = VisionEncoder("gemma3", text_hidden, h, FFN, LAYERS, HEADS, IMAGE, PATCH, half, half)
    writer = vision_writer(out, "tiny-gemma3", enc)
    writer.add_vision_projector_scale_factor(POOL)
    write(writer, tensors)
    return out
