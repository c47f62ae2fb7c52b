"""Tiny random-weight Llama/Mistral/Qwen2 checkpoints in Hugging Face layout, for tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

BASE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
}


def _weights(cfg: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    """Weights scaled so activations stay O(1): logits then differ clearly between tokens."""
    rng = np.random.default_rng(seed)
    hidden, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    d = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q_dim, kv_dim = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def norm() -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(hidden)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
        w[p + "self_attn.q_proj.weight"] = mat(q_dim, hidden)
        w[p + "self_attn.k_proj.weight"] = mat(kv_dim, hidden)
        w[p + "self_attn.v_proj.weight"] = mat(kv_dim, hidden)
        w[p + "self_attn.o_proj.weight"] = mat(hidden, q_dim)
        w[p + "mlp.gate_proj.weight"] = mat(inter, hidden)
        w[p + "mlp.up_proj.weight"] = mat(inter, hidden)
        w[p + "mlp.down_proj.weight"] = mat(hidden, inter)
        biased: list[tuple[str, int]] = []
        if cfg["model_type"] == "qwen2" or cfg.get("attention_bias"):
            biased = [("q", q_dim), ("k", kv_dim), ("v", kv_dim)]
        if cfg.get("attention_bias"):  # Llama's option biases o_proj too; Qwen2 never does
            biased.append(("o", hidden))
        for m, size in biased:
            w[p + f"self_attn.{m}_proj.bias"] = rng.standard_normal(size).astype(np.float32)
    w["model.norm.weight"] = norm()
    if not cfg["tie_word_embeddings"]:
        w["lm_head.weight"] = mat(vocab, hidden)
    return w


def trim_tokenizer(src: Path, out: Path, size: int) -> Path:
    """A byte-level BPE tokenizer cut to its first size ids (merge rank r makes id r + first)."""
    out.mkdir(parents=True)
    tok = json.loads((src / "tokenizer.json").read_text())
    model = tok["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if i < size}
    merges = [m if isinstance(m, list) else m.split(" ", 1) for m in model["merges"]]
    model["merges"] = [m for m in merges if model["vocab"].get("".join(m), size) < size]
    for a, b in model["merges"]:
        assert a in model["vocab"] and b in model["vocab"], (a, b)
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < size]
    (out / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    shutil.copy(src / "tokenizer_config.json", out / "tokenizer_config.json")
    return out


def tiny_checkpoint(
    out: Path, tokenizer_dir: Path, arch: str, model_type: str, seed: int = 0, **overrides: Any
) -> Path:
    """Write config.json, random model.safetensors and the tokenizer files of tokenizer_dir."""
    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, out / name)
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = {**BASE, "architectures": [arch], "model_type": model_type, "vocab_size": vocab}
    cfg.update(overrides)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_weights(cfg, seed), str(out / "model.safetensors"))
    return out
