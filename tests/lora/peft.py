"""Random PEFT LoRA adapters for a Hugging Face decoder checkpoint, and their merged weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from quantize.gguf_header import read_header

ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")


def _shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(out, in) of each adaptable projection of a Llama-style block."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    d = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * d
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * d
    return {
        "q_proj": (q, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, q),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
    }


def _module(target: str) -> str:
    return "self_attn" if target in ATTN else "mlp"


def random_peft(
    out: Path,
    cfg: dict[str, Any],
    *,
    r: int = 4,
    alpha: float = 8.0,
    targets: tuple[str, ...] = ATTN + MLP,
    layers: list[int] | None = None,
    strength: float = 1.0,
    seed: int = 0,
    base: str = "base",
) -> Path:
    """A PEFT adapter directory (adapter_config.json + adapter_model.safetensors).

    A and B are both random (PEFT starts B at zero; a trained one is not), scaled so that
    (alpha / r)·B·A changes a weight by about `strength` times the weights' own scale."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    shapes = _shapes(cfg)
    tensors: dict[str, np.ndarray] = {}
    for i in layers if layers is not None else range(cfg["num_hidden_layers"]):
        for t in targets:
            n_out, n_in = shapes[t]
            key = f"base_model.model.model.layers.{i}.{_module(t)}.{t}"
            a = rng.standard_normal((r, n_in)) / np.sqrt(n_in)
            b = rng.standard_normal((n_out, r)) * strength / np.sqrt(r) * (r / alpha)
            tensors[key + ".lora_A.weight"] = a.astype(np.float32)
            tensors[key + ".lora_B.weight"] = b.astype(np.float32)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": list(targets),
        "base_model_name_or_path": base,
        "bias": "none",
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def merged_checkpoint(base: Path, adapter: Path, out: Path, scale: float) -> Path:
    """The base checkpoint with W + scale·(alpha/r)·B·A in place of each adapted weight."""
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("*.safetensors"))
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    factor = scale * cfg["lora_alpha"] / cfg["r"]
    lora = load_file(str(adapter / "adapter_model.safetensors"))
    for file in sorted(base.glob("*.safetensors")):
        weights = load_file(str(file))
        for name in list(weights):
            key = "base_model.model." + name.removesuffix(".weight")
            if key + ".lora_A.weight" in lora:
                a = lora[key + ".lora_A.weight"].astype(np.float64)
                b = lora[key + ".lora_B.weight"].astype(np.float64)
                w = weights[name].astype(np.float64) + factor * (b @ a)
                weights[name] = w.astype(np.float32)
        save_file(weights, str(out / file.name))
    return out


def smollm_config(path: Path) -> dict[str, object]:
    """The config.json a Hugging Face copy of the GGUF would have (what convert-lora reads)."""
    h = read_header(path)

    def kv(key: str) -> int | float:
        return h.get(f"llama.{key}")  # type: ignore[no-any-return]

    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": kv("embedding_length"),
        "intermediate_size": kv("feed_forward_length"),
        "num_hidden_layers": kv("block_count"),
        "num_attention_heads": kv("attention.head_count"),
        "num_key_value_heads": kv("attention.head_count_kv"),
        "max_position_embeddings": kv("context_length"),
        "rms_norm_eps": kv("attention.layer_norm_rms_epsilon"),
        "vocab_size": h.length("tokenizer.ggml.tokens"),
    }
