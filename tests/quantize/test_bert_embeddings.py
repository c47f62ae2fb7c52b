"""MiniLM (BertModel) converted by us must embed like an independent numpy BERT forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from safetensors import safe_open

from tests.quantize.llm import embed

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map sentences to vectors; similar sentences land close together!",
]
MIN_COSINE = {"f32": 0.99, "f16": 0.99, "q8_0": 0.98}


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / np.sqrt(2.0)))


def bert_reference(model_dir: Path, ids: list[int]) -> np.ndarray:
    """sentence-transformers' all-MiniLM-L6-v2: BERT, mean pooling, L2 normalization, in numpy."""
    cfg = json.loads((model_dir / "config.json").read_text())
    eps, n_head = cfg["layer_norm_eps"], cfg["num_attention_heads"]
    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        w = {k: f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = x + w["embeddings.token_type_embeddings.weight"][0]
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
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_bert_metadata(minilm_ggufs: dict[str, Path]) -> None:
    reader = gguf.GGUFReader(minilm_ggufs["f16"])
    kv = {
        k: f.contents()
        for k, f in reader.fields.items()
        if not k.startswith("tokenizer.ggml.token")
    }
    assert kv["general.architecture"] == "bert"
    assert kv["bert.block_count"] == 6
    assert kv["bert.attention.causal"] is False
    assert kv["bert.pooling_type"] == int(gguf.PoolingType.MEAN)
    assert kv["tokenizer.ggml.model"] == "bert"
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    assert tokens[101] == "[CLS]" and tokens[7592] == "\u2581hello" and tokens[2015] == "s"
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["token_embd.weight"] == gguf.GGMLQuantizationType.F16
    assert types["position_embd.weight"] == gguf.GGMLQuantizationType.F32
    assert types["blk.0.attn_q.bias"] == gguf.GGMLQuantizationType.F32


@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_bert_embedding_matches_numpy(
    outtype: str, minilm_ggufs: dict[str, Path], minilm_dir: Path
) -> None:
    for text in TEXTS:
        ids, vec = embed(minilm_ggufs[outtype], text)
        assert ids[0] == 101 and ids[-1] == 102, ids  # [CLS] ... [SEP]
        ref = bert_reference(minilm_dir, ids)
        cos = float(vec @ ref / (np.linalg.norm(vec) * np.linalg.norm(ref)))
        assert cos >= MIN_COSINE[outtype], (outtype, text, cos)


def test_bert_embeddings_separate_meanings(minilm_ggufs: dict[str, Path]) -> None:
    """A paraphrase lands closer than an unrelated sentence (the model is not just 'any vector')."""
    path = minilm_ggufs["f16"]
    a, b, c = (
        v / np.linalg.norm(v)
        for _, v in (
            embed(path, "A man is playing a guitar."),
            embed(path, "Someone plays an acoustic guitar."),
            embed(path, "The stock market fell sharply today."),
        )
    )
    assert float(a @ b) > float(a @ c) + 0.2
