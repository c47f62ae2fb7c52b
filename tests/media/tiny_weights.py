"""What the tiny random projectors of the media tests share: weights scaled so activations
stay O(1) through every block, the blocks of a CLIP-style encoder under llama.cpp's tensor
names, and writing the GGUF out."""

from __future__ import annotations

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


def write(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray]) -> None:
    """Add `tensors` and write the file out (header, key/values, tensors)."""
    for name, data in tensors.items():
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
