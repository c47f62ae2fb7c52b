"""An independent numpy forward pass of sentence-transformers' all-MiniLM-L6-v2 (BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def bert_hidden(
    model_dir: Path, ids: list[int], token_types: list[int] | None = None, prefix: str = ""
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """BERT's last hidden states for one input, in float64 numpy, with the weights (their
    names without `prefix`, e.g. "bert." of a BertForSequenceClassification checkpoint)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    eps, n_head = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        w = {k.removeprefix(prefix): f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][token_types or [0] * n]
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
    return x, w


def bert_reference(model_dir: Path, ids: list[int]) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2: BERT, mean pooling, L2 normalization, in numpy."""
    pooled = bert_hidden(model_dir, ids)[0].mean(0)
    return pooled / np.linalg.norm(pooled)
