"""A SentencePiece (tokenizer.model) Llama converted end to end: a tiny BPE model with byte
fallback is trained here, llama.cpp must tokenize like sentencepiece itself and the logits of
the converted random-weight model must equal the numpy reference."""

from __future__ import annotations

import ctypes
import io
import json
import random
import shutil
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import pytest
from safetensors.numpy import save_file

from quantize.convert import convert
from tests.quantize.decoder_reference import decoder_reference
from tests.quantize.llm import all_logits, load, tokenize
from tests.quantize.tiny import BASE, _weights

spm = pytest.importorskip("sentencepiece")

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "hex",
    "jolly",
    "boxers",
    "and",
    "zebras;",
    "models",
    "convert",
    "tensors",
    "into",
    "files,",
    "tokens",
    "become",
    "ids,",
    "numbers",
    "like",
    "1234",
    "and",
    "3.14",
    "appear,",
    "hello",
    "world!",
    "what?",
    "(yes)",
    "[no]",
    "{maybe}",
    '"quoted"',
    "it's",
    "naïve",
    "résumé",
    "straße",
]
SAMPLES = [
    "Hello world",
    "hello world!",
    " leading space",
    "two  spaces   and three",
    "trailing space ",
    "tab\tand\nnewline",
    "digits 0123456789 and 3.14159, -42",
    "punctuation: !@#$%^&*()_+-=[]{};':\",./<>?",
    "café ünïcödé 東京",
    "emoji 🦙 and ∑ math",
    "the quick brown fox jumps over the lazy dog",
    "straße naïve résumé",
    "",
]


def _detokenize(model: object, tokens: list[int], remove_special: bool) -> str:
    """llama.cpp's llama_detokenize (which drops the dummy-prefix space as sentencepiece does)."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    arr = (llama_cpp.llama_token * max(len(tokens), 1))(*tokens)
    buf = ctypes.create_string_buffer(1024)
    n = llama_cpp.llama_detokenize(vocab, arr, len(tokens), buf, len(buf), remove_special, False)
    assert n >= 0
    return buf.raw[:n].decode()


def _corpus() -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(400)]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A BPE SentencePiece model trained as Llama's: <unk> <s> </s> at 0/1/2, byte fallback."""
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=out,
        model_type="bpe",
        vocab_size=600,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=0.99,
        split_digits=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        num_threads=1,
        minloglevel=2,
    )
    return out.getvalue()


@pytest.fixture(scope="module")
def sp(spm_model: bytes) -> Any:
    return spm.SentencePieceProcessor(model_proto=spm_model)


@pytest.fixture(scope="module")
def tiny(spm_model: bytes, sp: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(HF checkpoint directory with tokenizer.model, its f32 GGUF)."""
    root = tmp_path_factory.mktemp("spm")
    src = root / "llama2"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(spm_model)
    (src / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "add_bos_token": True,
                "add_eos_token": False,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "tokenizer_class": "LlamaTokenizer",
            }
        )
    )
    cfg = {
        **BASE,
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": sp.get_piece_size(),
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    (src / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(_weights(cfg, 7), str(src / "model.safetensors"))
    return src, convert(src, root / "llama2.f32.gguf", "f32", progress=False)


def test_metadata(tiny: tuple[Path, Path], sp: Any) -> None:
    reader = gguf.GGUFReader(tiny[1])
    kv = {k: f.contents() for k, f in reader.fields.items()}
    n = sp.get_piece_size()
    assert kv["tokenizer.ggml.model"] == "llama"
    assert kv["tokenizer.ggml.tokens"] == [sp.id_to_piece(i) for i in range(n)]
    np.testing.assert_allclose(kv["tokenizer.ggml.scores"], [sp.get_score(i) for i in range(n)])
    types = kv["tokenizer.ggml.token_type"]
    assert types[:3] == [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
    assert types[3:259] == [gguf.TokenType.BYTE] * 256
    assert sp.id_to_piece(3) == "<0x00>" and sp.id_to_piece(258) == "<0xFF>"
    assert set(types[259:]) == {gguf.TokenType.NORMAL}
    assert kv["tokenizer.ggml.unknown_token_id"] == 0
    assert kv["tokenizer.ggml.bos_token_id"] == 1
    assert kv["tokenizer.ggml.eos_token_id"] == 2
    assert kv["tokenizer.ggml.add_bos_token"] is True
    assert kv["tokenizer.ggml.add_eos_token"] is False
    assert kv["tokenizer.ggml.add_space_prefix"] is True
    assert kv["llama.vocab_size"] == n


def test_tokenization_matches_sentencepiece(tiny: tuple[Path, Path], sp: Any) -> None:
    byte_fallback = 0
    with load(tiny[1], n_ctx=64) as (model, _ctx):
        for text in SAMPLES:
            want = sp.encode(text)
            byte_fallback += sum(3 <= t < 259 for t in want)
            assert tokenize(model, text, add_special=True) == [1, *want], text
            assert tokenize(model, text, add_special=False) == want, text
            assert sp.decode(want) == text
            assert _detokenize(model, want, remove_special=False) == text, text
            # Stripping a leading BOS, llama.cpp keeps the dummy-prefix space (by its design).
            with_bos = _detokenize(model, [1, *want], remove_special=True)
            assert with_bos == (" " + text if text else ""), text
    assert byte_fallback >= 10  # the non-ASCII samples really exercise <0xXX> pieces


def test_logits_equal_numpy_reference(tiny: tuple[Path, Path], sp: Any) -> None:
    src, out = tiny
    tokens = [1, *sp.encode("the quick café 東京 42!")]
    assert len(tokens) >= 10
    got = all_logits(out, tokens)
    want = decoder_reference(src, tokens)
    assert got.shape == want.shape == (len(tokens), sp.get_piece_size())
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    assert rel < 1e-5, rel  # f32 throughout
    assert (got.argmax(-1) == want.argmax(-1)).all()


def test_special_ids_from_tokenizer_config(tiny: tuple[Path, Path], tmp_path: Path) -> None:
    """Without tokenizer.json or *_token_id in config.json, tokenizer_config.json's names count."""
    src = tmp_path / "m"
    shutil.copytree(tiny[0], src)
    config = json.loads((src / "config.json").read_text())
    del config["bos_token_id"], config["eos_token_id"]
    (src / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((src / "tokenizer_config.json").read_text())
    tok_config["eos_token"] = {"content": "</s>", "special": True}  # the AddedToken form
    (src / "tokenizer_config.json").write_text(json.dumps(tok_config))
    reader = gguf.GGUFReader(convert(src, tmp_path / "m.gguf", "f32", progress=False))
    kv = {k: f.contents() for k, f in reader.fields.items() if k.endswith("_token_id")}
    assert kv == {
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
