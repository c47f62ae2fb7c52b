"""MiniLM (BertModel) converted by us must embed like an independent numpy BERT forward pass."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from tests.quantize.bert_reference import bert_reference
from tests.quantize.llm import embed

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Embedding models map sentences to vectors; similar sentences land close together!",
]
MIN_COSINE = {"f32": 0.99, "f16": 0.99, "q8_0": 0.98}


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
