"""BertForSequenceClassification converts into a RANK-pooling GGUF with llama.cpp's head names."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from quantize.convert import convert
from quantize.errors import UnsupportedArchitecture
from tests.quantize.cross_encoder import tiny_cross_encoder


def test_cross_encoder_metadata_and_head(minilm_dir: Path, tmp_path: Path) -> None:
    src = tiny_cross_encoder(tmp_path / "hf", minilm_dir)
    reader = gguf.GGUFReader(convert(src, tmp_path / "ranker.gguf", "q8_0", progress=False))
    assert reader.fields["general.architecture"].contents() == "bert"
    assert reader.fields["bert.pooling_type"].contents() == int(gguf.PoolingType.RANK)
    assert reader.fields["bert.attention.causal"].contents() is False
    types = {t.name: t.tensor_type for t in reader.tensors}
    F32 = gguf.GGMLQuantizationType.F32
    # transformers' head: classifier(tanh(pooler.dense(h[CLS]))) = llama.cpp's cls, cls.output.
    assert {"cls.weight", "cls.bias", "cls.output.weight", "cls.output.bias"} <= set(types)
    assert all(types[n] == F32 for n in ("cls.weight", "cls.output.weight"))
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert not any("pooler" in n or "classifier" in n for n in types)


def test_multi_label_classifier_is_not_a_reranker(minilm_dir: Path, tmp_path: Path) -> None:
    labels = {"id2label": {"0": "neg", "1": "pos"}, "label2id": {"neg": 0, "pos": 1}}
    src = tiny_cross_encoder(tmp_path / "hf", minilm_dir, **labels)
    with pytest.raises(UnsupportedArchitecture, match="2 labels"):
        convert(src, tmp_path / "x.gguf", "f32", progress=False)
