"""Write a llama GGUF back out as a Hugging Face checkpoint directory (f32 safetensors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import save_file

from quantize.archs import unpermute_rope
from quantize.errors import InvalidGGUF, UnsupportedArchitecture
from quantize.pretokenizers import PRE_TO_JSON

# GGUF tensor name (per block with {bid}) -> Hugging Face LlamaForCausalLM name.
LLAMA_NAMES: dict[str, str] = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{bid}.attn_norm.weight": "model.layers.{bid}.input_layernorm.weight",
    "blk.{bid}.ffn_norm.weight": "model.layers.{bid}.post_attention_layernorm.weight",
    "blk.{bid}.attn_q.weight": "model.layers.{bid}.self_attn.q_proj.weight",
    "blk.{bid}.attn_k.weight": "model.layers.{bid}.self_attn.k_proj.weight",
    "blk.{bid}.attn_v.weight": "model.layers.{bid}.self_attn.v_proj.weight",
    "blk.{bid}.attn_output.weight": "model.layers.{bid}.self_attn.o_proj.weight",
    "blk.{bid}.ffn_gate.weight": "model.layers.{bid}.mlp.gate_proj.weight",
    "blk.{bid}.ffn_up.weight": "model.layers.{bid}.mlp.up_proj.weight",
    "blk.{bid}.ffn_down.weight": "model.layers.{bid}.mlp.down_proj.weight",
}

SPECIAL_IDS = {
    "bos": "bos_token_id",
    "eos": "eos_token_id",
    "unk": "unknown_token_id",
    "pad": "padding_token_id",
}


def _hf_name(name: str) -> str:
    parts = name.split(".")
    if parts[0] == "blk":
        return LLAMA_NAMES[".".join(["blk", "{bid}", *parts[2:]])].format(bid=parts[1])
    return LLAMA_NAMES[name]


def _kv(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.get_field(key)
    return default if f is None else f.contents()


def export_hf(src: Path | str, out_dir: Path | str) -> Path:
    """Dequantize every tensor, undo llama.cpp's Q/K permutation, write config and tokenizer."""
    reader = gguf.GGUFReader(Path(src))
    arch = _kv(reader, "general.architecture")
    if arch != "llama":
        raise UnsupportedArchitecture(f"export handles llama GGUFs only, not {arch!r}")
    if _kv(reader, "tokenizer.ggml.model") != "gpt2":
        raise UnsupportedArchitecture("export handles byte-level BPE (gpt2) vocabularies only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_head = int(_kv(reader, "llama.attention.head_count"))
    n_kv = int(_kv(reader, "llama.attention.head_count_kv", n_head))
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        try:
            name = _hf_name(t.name)
        except KeyError:
            raise InvalidGGUF(f"tensor {t.name} has no Hugging Face llama name") from None
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if t.name.endswith("attn_q.weight"):
            data = unpermute_rope(data, n_head)
        elif t.name.endswith("attn_k.weight"):
            data = unpermute_rope(data, n_kv)
        tensors[name] = np.ascontiguousarray(data)
    save_file(tensors, str(out / "model.safetensors"))
    tied = "lm_head.weight" not in tensors
    _write_json(out / "config.json", _config(reader, n_head, n_kv, tied))
    _write_tokenizer(reader, out)
    return out


def export_tokenizer(src: Path | str, out_dir: Path | str) -> Path:
    """Only tokenizer.json and tokenizer_config.json of a byte-level BPE GGUF."""
    reader = gguf.GGUFReader(Path(src))
    if _kv(reader, "tokenizer.ggml.model") != "gpt2":
        raise UnsupportedArchitecture("export handles byte-level BPE (gpt2) vocabularies only")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(reader, out)
    return out


def _config(reader: gguf.GGUFReader, n_head: int, n_kv: int, tied: bool) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": int(_kv(reader, "llama.embedding_length")),
        "intermediate_size": int(_kv(reader, "llama.feed_forward_length")),
        "num_hidden_layers": int(_kv(reader, "llama.block_count")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "max_position_embeddings": int(_kv(reader, "llama.context_length")),
        "rms_norm_eps": float(_kv(reader, "llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": float(_kv(reader, "llama.rope.freq_base", 10000.0)),
        "vocab_size": len(_kv(reader, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": tied,
        "torch_dtype": "float32",
        "_name_or_path": _kv(reader, "general.name", "model"),
    }
    for short, key in (("bos", "bos_token_id"), ("eos", "eos_token_id")):
        value = _kv(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            config[f"{short}_token_id"] = int(value)
    return config


def _write_tokenizer(reader: gguf.GGUFReader, out: Path) -> None:
    tokens: list[str] = _kv(reader, "tokenizer.ggml.tokens")
    types: list[int] = _kv(reader, "tokenizer.ggml.token_type")
    merges: list[str] = _kv(reader, "tokenizer.ggml.merges")
    pre = _kv(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TO_JSON:
        raise UnsupportedArchitecture(f"no tokenizer.json form known for pre-tokenizer {pre!r}")
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": True,
        }
        for i, (tok, kind) in enumerate(zip(tokens, types, strict=True))
        if kind == gguf.TokenType.CONTROL
    ]
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": PRE_TO_JSON[pre],
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    _write_json(out / "tokenizer.json", tokenizer)
    config: dict[str, Any] = {"model_max_length": int(_kv(reader, "llama.context_length"))}
    for short, key in SPECIAL_IDS.items():
        idx = _kv(reader, f"tokenizer.ggml.{key}")
        if idx is not None:
            config[f"{short}_token"] = tokens[int(idx)]
    for flag in ("add_bos_token", "add_eos_token"):
        value = _kv(reader, f"tokenizer.ggml.{flag}")
        if value is not None:
            config[flag] = bool(value)
    template = _kv(reader, "tokenizer.chat_template")
    if template is not None:
        config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", config)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
