"""An independent numpy forward pass of a Llama/Mistral/Qwen2 decoder from its HF checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open


def _rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def _rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def inv_freq(cfg: dict[str, Any], dim: int) -> np.ndarray:
    """transformers' RoPE inverse frequencies, llama3 scaling applied (as in HF's blend form)."""
    base = float(cfg.get("rope_theta", 10000.0))
    freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        return freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / freq
    smooth = (old / wavelen - low) / (high - low)
    blended = (1 - smooth) * freq / factor + smooth * freq
    out = np.where(wavelen > old / low, freq / factor, freq)
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return np.where(medium, blended, out)


def decoder_reference(model_dir: Path, ids: list[int], rope: str = "hf") -> np.ndarray:
    """Logits (len(ids), vocab) in float64; rope="interleaved" is the wrong pairing (a control)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        w = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    n, eps = len(ids), cfg["rms_norm_eps"]
    n_head, n_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    pos = np.arange(n, dtype=np.float64)
    scaling = cfg.get("rope_scaling") or {}
    if scaling.get("rope_type", scaling.get("type")) == "linear":
        pos = pos / scaling["factor"]
    angles = np.outer(pos, inv_freq(cfg, d))  # (n, d/2)
    cos, sin = np.cos(angles), np.sin(angles)

    def apply_rope(t: np.ndarray) -> np.ndarray:  # t: (heads, n, d)
        if rope == "interleaved":
            pairs = t.reshape(*t.shape[:-1], d // 2, 2)
            a, b = pairs[..., 0], pairs[..., 1]
            return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(t.shape)
        c, s = np.concatenate([cos, cos], -1), np.concatenate([sin, sin], -1)
        return t * c + _rotate_half(t) * s

    causal = np.triu(np.full((n, n), -np.inf), 1)
    x = w["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            out = h @ w[p + name + ".weight"].T
            bias = w.get(p + name + ".bias")
            return out if bias is None else out + bias

        h = _rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = lin(h, "self_attn.q_proj").reshape(n, n_head, d).transpose(1, 0, 2)
        k = lin(h, "self_attn.k_proj").reshape(n, n_kv, d).transpose(1, 0, 2)
        v = lin(h, "self_attn.v_proj").reshape(n, n_kv, d).transpose(1, 0, 2)
        q, k = apply_rope(q), apply_rope(k)
        k, v = (np.repeat(t, n_head // n_kv, axis=0) for t in (k, v))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(d) + causal
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        x = x + lin((att @ v).transpose(1, 0, 2).reshape(n, n_head * d), "self_attn.o_proj")
        h = _rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(_silu(lin(h, "mlp.gate_proj")) * lin(h, "mlp.up_proj"), "mlp.down_proj")
    x = _rms_norm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ head.T
