"""A Qwen2-VL-shaped vision model made in the test: the embedded SmolLM2 rewritten as a
`qwen2vl` language model (M-RoPE positions) and a tiny random `qwen2vl_merger` projector,
written as llama.cpp's `convert_hf_to_gguf.py --mmproj` writes one.

M-RoPE gives every image token a (time, row, column) position: an image of nx × ny tokens
takes nx·ny KV cells but advances the sequence's position by max(nx, ny) only, so after the
first image a cell's index and its position differ. This model is what makes edged's engine
map one to the other.

The language model keeps SmolLM2's weights: for text, whose positions are equal in every
section, M-RoPE is NEOX RoPE, so only the Q and K rows are taken back from the interleaved
order llama.cpp's converter gives llama weights (rows move whole, so the quantized blocks are
copied as they are). It answers much as SmolLM2 does: the same 8 greedy tokens on a chat
prompt (its logits differ by up to 1.0 there, a difference not traced further; the tests
hold it against itself, through libmtmd)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from tests.media.tiny_weights import Init, VisionEncoder, encoder_blocks, vision_writer, write

ARCH = "qwen2vl"
# Half the head dimension (64 / 2 = 32), split into time, height, width and a spare section
# in Qwen2-VL's proportions ([16, 24, 24, 0] of its 64).
ROPE_SECTIONS = [8, 12, 12, 0]

HIDDEN = 32
FFN = 64
LAYERS = 2
HEADS = 2
PATCH = 4  # pixels per patch side; 2×2 patches merge into one token: 8 pixels per token side
MERGE = 2
MEAN = [0.48145466, 0.4578275, 0.40821073]  # Qwen2-VL's (CLIP's) normalisation
STD = [0.26862954, 0.26130258, 0.27577711]


def _unpermute(rows: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's llama Q/K permutation (rows grouped [head, half, pair] back to
    [head, pair, half]); works on quantized rows, each a byte string of one output row."""
    head_dim = rows.shape[0] // n_head
    return (
        rows.reshape(n_head, head_dim // 2, 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
    )


def write_lm(src: Path, out: Path) -> Path:
    """SmolLM2 (a llama GGUF) as a qwen2vl GGUF: keys renamed, M-RoPE sections added, Q and K
    rows in NEOX order; every other tensor copied byte for byte."""
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(out, ARCH, endianess=reader.endianess)
    n_head = n_head_kv = 0
    for field in reader.fields.values():
        name = field.name
        if name.startswith("GGUF.") or name == gguf.Keys.General.ARCHITECTURE:
            continue
        if name.startswith("llama."):
            name = ARCH + name[len("llama") :]
        value = field.contents()
        if name == f"{ARCH}.attention.head_count":
            n_head = int(value)
        if name == f"{ARCH}.attention.head_count_kv":
            n_head_kv = int(value)
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, vtype, sub_type=sub)
    writer.add_array(f"{ARCH}.rope.dimension_sections", ROPE_SECTIONS)
    assert n_head and n_head_kv, "SmolLM2's head counts not found"
    for t in reader.tensors:
        data = np.array(t.data)
        if t.name.endswith("attn_q.weight"):
            data = _unpermute(data, n_head)
        elif t.name.endswith("attn_k.weight"):
            data = _unpermute(data, n_head_kv)
        writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def write_mmproj(out: Path, text_hidden: int, seed: int = 0) -> Path:
    """An F32 `qwen2vl_merger` mmproj: two patch convolutions (a still image uses both),
    LayerNorm blocks with 2-D rotary attention, and the 2×2 merger MLP into `text_hidden`."""
    init = Init(seed)
    mat, vec = init.mat, init.vec
    h, merged = HIDDEN, HIDDEN * MERGE * MERGE
    tensors: dict[str, np.ndarray] = {
        # Half of each: the converter splits the temporal kernel of size 2 in two.
        "v.patch_embd.weight": 0.5 * mat(h, 3, PATCH, PATCH),
        "v.patch_embd.weight.1": 0.5 * mat(h, 3, PATCH, PATCH),
    }
    tensors |= encoder_blocks(init, "v", LAYERS, h, FFN)
    tensors["v.post_ln.weight"] = vec(h, 1.0)
    tensors["v.post_ln.bias"] = vec(h)
    tensors["mm.0.weight"] = mat(merged, merged)
    tensors["mm.0.bias"] = vec(merged)
    tensors["mm.2.weight"] = mat(text_hidden, merged)
    tensors["mm.2.bias"] = vec(text_hidden)

    enc = VisionEncoder(
        gguf.VisionProjectorType.QWEN2VL,
        text_hidden,
        h,
        FFN,
        LAYERS,
        HEADS,
        PATCH * MERGE * 8,
        PATCH,
        MEAN,
        STD,
    )
    writer = vision_writer(out, "tiny-qwen2vl", enc)
    writer.add_vision_spatial_merge_size(MERGE)
    write(writer, tensors)
    return out
