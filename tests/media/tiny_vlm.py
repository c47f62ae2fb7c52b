"""A tiny random-weight SmolVLM (Idefics3) checkpoint in Hugging Face layout, and an
independent numpy forward pass of its vision encoder and projector."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from tests.media.tiny_weights import Init

# 32×32 pixels in 8×8 patches: 16 patches, pixel-shuffled by 2 into 4 tokens per image tile.
VISION: dict[str, Any] = {
    "model_type": "smolvlm_vision",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "layer_norm_eps": 1e-6,
    "hidden_act": "gelu_pytorch_tanh",
}
SCALE_FACTOR = 2
MEAN = [0.5, 0.5, 0.5]
STD = [0.5, 0.5, 0.5]


def write_checkpoint(out: Path, text_hidden: int, seed: int = 0) -> Path:
    """config.json, preprocessor_config.json and model.safetensors of a SmolVLM whose vision
    side is tiny and random; the language model's tensors are stand-ins the converter skips."""
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["SmolVLMForConditionalGeneration"],
        "model_type": "smolvlm",
        "scale_factor": SCALE_FACTOR,
        "vision_config": VISION,
        "text_config": {"model_type": "llama", "hidden_size": text_hidden},
        "torch_dtype": "float32",
    }
    preproc = {
        "image_processor_type": "SmolVLMImageProcessor",
        "image_mean": MEAN,
        "image_std": STD,
        "size": {"longest_edge": VISION["image_size"]},
        "max_image_size": {"longest_edge": VISION["image_size"]},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "preprocessor_config.json").write_text(json.dumps(preproc, indent=1))
    save_file(_weights(text_hidden, seed), str(out / "model.safetensors"))
    return out


def _weights(text_hidden: int, seed: int) -> dict[str, np.ndarray]:
    """Weights scaled so activations stay O(1) through every block."""
    init = Init(seed)
    mat, vec = init.mat, init.vec
    h, ffn, p = VISION["hidden_size"], VISION["intermediate_size"], VISION["patch_size"]
    n_patches = (VISION["image_size"] // p) ** 2

    e = "model.vision_model.embeddings."
    w = {
        e + "patch_embedding.weight": mat(h, 3, p, p),
        e + "patch_embedding.bias": vec(h),
        e + "position_embedding.weight": init.normal(n_patches, h),
    }
    for i in range(VISION["num_hidden_layers"]):
        b = f"model.vision_model.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            w[b + norm + ".weight"] = vec(h, 1.0)
            w[b + norm + ".bias"] = vec(h)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[b + f"self_attn.{proj}.weight"] = mat(h, h)
            w[b + f"self_attn.{proj}.bias"] = vec(h)
        w[b + "mlp.fc1.weight"] = mat(ffn, h)
        w[b + "mlp.fc1.bias"] = vec(ffn)
        w[b + "mlp.fc2.weight"] = mat(h, ffn)
        w[b + "mlp.fc2.bias"] = vec(h)
    w["model.vision_model.post_layernorm.weight"] = vec(h, 1.0)
    w["model.vision_model.post_layernorm.bias"] = vec(h)
    w["model.connector.modality_projection.proj.weight"] = mat(text_hidden, h * SCALE_FACTOR**2)
    # The language model is converted from its own GGUF; these must be skipped, not mapped.
    w["model.text_model.norm.weight"] = np.ones(text_hidden, np.float32)
    w["lm_head.weight"] = mat(8, text_hidden)
    return w


def sample_image(size: int = VISION["image_size"], seed: int = 1) -> np.ndarray:
    """A deterministic RGB image (height, width, 3) of uint8: gradients plus noise, so that
    every patch differs and a transposed or mirrored read would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    base = np.stack([x * 255 / size, y * 255 / size, (x + y) * 127 / size], axis=-1)
    noise = rng.integers(-40, 40, size=(size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """SigLIP's activation (transformers' gelu_pytorch_tanh)."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float64)


def gelu_tanh_ggml(x: np.ndarray) -> np.ndarray:
    """gelu_tanh as ggml's CPU backend computes it: a table indexed by the F16 input,
    holding F16 outputs (exact beyond ±10, where it passes 0 or x)."""
    table = _f16(gelu_tanh(_f16(x)).astype(np.float32))
    return np.where(x <= -10.0, 0.0, np.where(x >= 10.0, x, table))


def image_embeddings(model_dir: Path, image: np.ndarray, *, ggml_f16: bool = False) -> np.ndarray:
    """(tokens, text hidden) embeddings of one image_size×image_size RGB uint8 image, in
    float64: Idefics3's processor normalisation, SigLIP's encoder, pixel shuffle, projection.

    ggml_f16 rounds where libmtmd's CPU graph does, and only there: the patch convolution
    (clip's im2col runs in F16, pixels and kernel both rounded) and GELU (ggml's F16 table).
    Everything else is F32 in ggml; float64 here."""
    cfg = json.loads((model_dir / "config.json").read_text())
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    vis = cfg["vision_config"]
    p, n_head, eps = vis["patch_size"], vis["num_attention_heads"], vis["layer_norm_eps"]
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        w = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    size = vis["image_size"]
    assert image.shape == (size, size, 3), "the reference takes images already at image_size"

    pixels = (image.astype(np.float64) / 255.0 - np.array(pre["image_mean"])) / np.array(
        pre["image_std"]
    )
    # Conv2d(kernel = stride = patch): each patch, channel-major, dotted with each filter;
    # patches in row-major order (flatten(2).transpose(1, 2) of the conv output).
    side = size // p
    patches = pixels.reshape(side, p, side, p, 3).transpose(0, 2, 4, 1, 3).reshape(side * side, -1)
    e = "model.vision_model.embeddings."
    kernel = w[e + "patch_embedding.weight"].reshape(vis["hidden_size"], -1)
    gelu = gelu_tanh_ggml if ggml_f16 else gelu_tanh
    if ggml_f16:
        patches, kernel = _f16(patches), _f16(kernel)
    x = patches @ kernel.T + w[e + "patch_embedding.bias"]
    x = x + w[e + "position_embedding.weight"]  # full image: position ids 0..n-1

    n, hidden = x.shape
    d = hidden // n_head
    for i in range(vis["num_hidden_layers"]):
        b = f"model.vision_model.encoder.layers.{i}."

        def lin(h: np.ndarray, name: str, b: str = b) -> np.ndarray:
            return h @ w[b + name + ".weight"].T + w[b + name + ".bias"]

        h = _layer_norm(x, w[b + "layer_norm1.weight"], w[b + "layer_norm1.bias"], eps)
        q, k, v = (lin(h, f"self_attn.{m}_proj") for m in "qkv")
        q, k, v = (t.reshape(n, n_head, d).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, hidden)
        x = x + lin(ctx, "self_attn.out_proj")
        h = _layer_norm(x, w[b + "layer_norm2.weight"], w[b + "layer_norm2.bias"], eps)
        x = x + lin(gelu(lin(h, "mlp.fc1")), "mlp.fc2")
    post = "model.vision_model.post_layernorm."
    x = _layer_norm(x, w[post + "weight"], w[post + "bias"], eps)

    # Idefics3Connector.pixel_shuffle, step by step as transformers writes it.
    s = cfg["scale_factor"]
    x = x.reshape(side, side, hidden)
    x = x.reshape(side, side // s, hidden * s).transpose(1, 0, 2)
    x = x.reshape(side // s, side // s, hidden * s * s).transpose(1, 0, 2)
    x = x.reshape(n // (s * s), hidden * s * s)
    return x @ w["model.connector.modality_projection.proj.weight"].T


def png_bytes(image: np.ndarray) -> bytes:
    """A minimal 8-bit RGB PNG of an (height, width, 3) uint8 array (no Pillow here)."""
    import struct
    import zlib

    height, width, _ = image.shape

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + image[y].tobytes() for y in range(height))  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
