"""A tiny random-weight BertForSequenceClassification and its score in plain numpy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from tests.quantize.bert_reference import bert_hidden

CONFIG: dict[str, Any] = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 128,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "hidden_act": "gelu",
    "id2label": {"0": "LABEL_0"},
    "label2id": {"LABEL_0": 0},
    "torch_dtype": "float32",
}


def _weights(cfg: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]

    def mat(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n: int, scale: float = 0.1, base: float = 0.0) -> np.ndarray:
        return (base + scale * rng.standard_normal(n)).astype(np.float32)

    e = "bert.embeddings."
    w = {
        e + "word_embeddings.weight": rng.standard_normal((cfg["vocab_size"], h)).astype(
            np.float32
        ),
        e + "position_embeddings.weight": mat(cfg["max_position_embeddings"], h),
        e + "token_type_embeddings.weight": mat(cfg["type_vocab_size"], h),
        e + "LayerNorm.weight": vec(h, base=1.0),
        e + "LayerNorm.bias": vec(h),
        e + "position_ids": np.arange(cfg["max_position_embeddings"], dtype=np.int64)[None],
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name, rows, cols in (
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", inter, h),
            ("output.dense", h, inter),
        ):
            w[p + name + ".weight"] = mat(rows, cols)
            w[p + name + ".bias"] = vec(rows)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + norm + ".weight"] = vec(h, base=1.0)
            w[p + norm + ".bias"] = vec(h)
    w["bert.pooler.dense.weight"] = mat(h, h)
    w["bert.pooler.dense.bias"] = vec(h)
    w["classifier.weight"] = (2.0 * mat(1, h)).astype(np.float32)
    w["classifier.bias"] = vec(1)
    return w


def tiny_cross_encoder(out: Path, tokenizer_dir: Path, seed: int = 0, **overrides: Any) -> Path:
    """config.json, random model.safetensors and tokenizer.json (a BERT WordPiece one)."""
    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    vocab = len(json.loads((out / "tokenizer.json").read_text())["model"]["vocab"])
    cfg = {**CONFIG, "vocab_size": vocab, **overrides}
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_weights(cfg, seed), str(out / "model.safetensors"))
    return out


def cross_encoder_score(model_dir: Path, ids: list[int], token_types: list[int]) -> float:
    """transformers' BertForSequenceClassification logit for one input, in float64 numpy."""
    x, w = bert_hidden(model_dir, ids, token_types, prefix="bert.")
    pooled = np.tanh(x[0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return float((pooled @ w["classifier.weight"].T + w["classifier.bias"])[0])
