"""What the tiny random projectors of the media tests share: weights scaled so activations
stay O(1) through every block, the blocks of a CLIP-style encoder under llama.cpp's tensor
names, and writing the GGUF out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np


class Init:
    """Random weights from one seeded stream (the order of calls fixes the values)."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def mat(self, *shape: int) -> np.ndarray:
        """A weight whose fan-in (every axis but the first) scales it to unit output."""
        fan_in = int(np.prod(shape[1:]))
        return (self.rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    def vec(self, n: int, centre: float = 0.0) -> np.ndarray:
        """A bias (centre 0) or a norm's scale (centre 1), jittered."""
        return (centre + 0.1 * self.rng.standard_normal(n)).astype(np.float32)

    def normal(self, *shape: int, scale: float = 0.5) -> np.ndarray:
        """Plain normal values (position embeddings)."""
        return (scale * self.rng.standard_normal(shape)).astype(np.float32)


def encoder_blocks(
    init: Init, prefix: str, layers: int, hidden: int, ffn: int, *, key_bias: bool = True
) -> dict[str, np.ndarray]:
    """`prefix`.blk.N.{ln1,ln2,attn_q,attn_k,attn_v,attn_out,ffn_up,ffn_down} of a
    pre-norm encoder (LayerNorms with bias; Whisper's key projection has none)."""
    h = hidden
    out: dict[str, np.ndarray] = {}
    for i in range(layers):
        b = f"{prefix}.blk.{i}."
        for norm in ("ln1", "ln2"):
            out[b + norm + ".weight"] = init.vec(h, 1.0)
            out[b + norm + ".bias"] = init.vec(h)
        for proj in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out[b + proj + ".weight"] = init.mat(h, h)
            if key_bias or proj != "attn_k":
                out[b + proj + ".bias"] = init.vec(h)
        out[b + "ffn_up.weight"] = init.mat(ffn, h)
        out[b + "ffn_up.bias"] = init.vec(ffn)
        out[b + "ffn_down.weight"] = init.mat(h, ffn)
        out[b + "ffn_down.bias"] = init.vec(h)
    return out


def mmproj_writer(out: Path, name: str) -> gguf.GGUFWriter:
    """A writer of an F32 mmproj GGUF named `name` (the caller adds its clip.* keys)."""
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.MMPROJ])
    writer.add_type(gguf.GGUFType.MMPROJ)
    writer.add_name(name)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    return writer


@dataclass(frozen=True)
class VisionEncoder:
    """The shape of a tiny vision encoder, as its clip.vision.* keys say it."""

    projector: str  # clip.projector_type
    text_hidden: int  # projection_dim: the language model's width
    hidden: int
    ffn: int
    layers: int
    heads: int
    image_size: int
    patch: int
    mean: list[float]
    std: list[float]


def vision_writer(out: Path, name: str, enc: VisionEncoder) -> gguf.GGUFWriter:
    """mmproj_writer with a vision encoder's keys (LayerNorm eps 1e-6, GELU); the caller adds
    its projector's own."""
    writer = mmproj_writer(out, name)
    writer.add_clip_has_vision_encoder(True)
    writer.add_clip_projector_type(enc.projector)
    writer.add_vision_projection_dim(enc.text_hidden)
    writer.add_vision_embedding_length(enc.hidden)
    writer.add_vision_feed_forward_length(enc.ffn)
    writer.add_vision_block_count(enc.layers)
    writer.add_vision_head_count(enc.heads)
    writer.add_vision_attention_layernorm_eps(1e-6)
    writer.add_vision_image_size(enc.image_size)
    writer.add_vision_patch_size(enc.patch)
    writer.add_vision_image_mean(enc.mean)
    writer.add_vision_image_std(enc.std)
    writer.add_vision_use_gelu(True)
    return writer


def write(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray]) -> None:
    """Add `tensors` and write the file out (header, key/values, tensors)."""
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
