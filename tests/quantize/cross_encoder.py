"""A tiny random-weight BertForSequenceClassification and its score in plain numpy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from tests.quantize.bert_reference import _gelu, _layer_norm

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
    cfg = json.loads((model_dir / "config.json").read_text())
    eps, n_head = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        w = {k.removeprefix("bert."): f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][token_types]
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{m}") for m in ("query", "key", "value"))
        d = q.shape[1] // n_head
        q, k, v = (t.reshape(n, n_head, d).transpose(1, 0, 2) for t in (q, k, v))
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(n, n_head * d)
        x = _layer_norm(
            x + lin(ctx, "attention.output.dense"),
            w[p + "attention.output.LayerNorm.weight"],
            w[p + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
        x = _layer_norm(
            x + h, w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps
        )
    pooled = np.tanh(x[0] @ w["pooler.dense.weight"].T + w["pooler.dense.bias"])
    return float((pooled @ w["classifier.weight"].T + w["classifier.bias"])[0])
