"""Converter fidelity: vocabulary holes are UNUSED, F16 never overflows silently, BF16
checkpoints quantize through BF16, and a safetensors index limits what is downloaded."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
from safetensors import safe_open

from quantize.checkpoint import Checkpoint
from quantize.convert import convert
from quantize.errors import OutOfRange
from quantize.fetch import fetch
from quantize.pull import intermediate_type, pull
from tests.quantize.hub import FakeHub, serve
from tests.quantize.llm import load
from tests.quantize.tiny import tiny_checkpoint, trim_tokenizer

VOCAB = 512
HOLES = 16
BIG = 1.0e5  # beyond F16's 65504, well inside BF16


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trim_tokenizer(smollm_tokenizer, tmp_path_factory.mktemp("tok") / "t", VOCAB)


@pytest.fixture(scope="module")
def holed(tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama whose config.json vocab_size exceeds its tokenizer's by HOLES ids."""
    root = tmp_path_factory.mktemp("holed")
    return tiny_checkpoint(
        root / "hf", tokenizer, "LlamaForCausalLM", "llama", vocab_size=VOCAB + HOLES
    )


def test_vocabulary_holes_are_unused_and_never_matched(holed: Path, tmp_path: Path) -> None:
    out = convert(holed, tmp_path / "holed.gguf", "f32", progress=False)
    reader = gguf.GGUFReader(out)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    assert len(tokens) == VOCAB + HOLES
    for i in range(VOCAB, VOCAB + HOLES):
        assert tokens[i] == f"[PAD{i}]" and types[i] == gguf.TokenType.UNUSED
    # A user typing the hole's text gets ordinary text tokens, not the untrained row.
    hole = VOCAB + 3
    with load(out, n_ctx=64) as (model, _ctx):
        vocab = llama_cpp.llama_model_get_vocab(model)
        raw = f"hi [PAD{hole}] there".encode()
        buf = (llama_cpp.llama_token * 64)()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, 64, False, True)
        ids = list(buf[:n])
    assert ids and hole not in ids and all(t < VOCAB for t in ids)


def _save_bf16(tensors: dict[str, np.ndarray], path: Path) -> None:
    """A safetensors file of BF16 tensors (numpy has no bfloat16; truncate float32 bits)."""
    header: dict[str, object] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, arr in tensors.items():
        bits = (np.ascontiguousarray(arr, dtype=np.float32).view(np.uint32) >> 16).astype("<u2")
        blob = bits.tobytes()
        header[name] = {
            "dtype": "BF16",
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


@pytest.fixture(scope="module")
def bf16_model(tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama stored as BF16, one embedding value beyond F16's range."""
    src = tiny_checkpoint(
        tmp_path_factory.mktemp("bf16") / "hf", tokenizer, "LlamaForCausalLM", "llama", seed=5
    )
    with safe_open(str(src / "model.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    tensors["model.embed_tokens.weight"][7, 3] = BIG
    _save_bf16(tensors, src / "model.safetensors")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}))
    return src


def _embd(path: Path) -> np.ndarray:
    t = next(t for t in gguf.GGUFReader(path).tensors if t.name == "token_embd.weight")
    return np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def test_bf16_beyond_f16_is_refused_not_inf(bf16_model: Path, tmp_path: Path) -> None:
    with pytest.raises(OutOfRange, match=r"model\.embed_tokens\.weight"):
        convert(bf16_model, tmp_path / "x.f16.gguf", "f16", progress=False)
    assert not list(tmp_path.iterdir())  # nothing half-written is left behind
    out = convert(bf16_model, tmp_path / "x.bf16.gguf", "bf16", progress=False)
    embd = _embd(out)
    assert np.isfinite(embd).all() and embd[7, 3] == pytest.approx(BIG, rel=1e-2)


def test_pull_quantizes_a_bf16_checkpoint_through_bf16(
    bf16_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert intermediate_type(Checkpoint(bf16_model), "Q8_0") == "bf16"
    assert intermediate_type(Checkpoint(bf16_model), "F32") == "f32"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with serve() as hub:
        hub.add("someone/tiny-bf16", bf16_model)
        out = pull("someone/tiny-bf16", "Q8_0", tmp_path / "m", endpoint=hub.url, progress=False)
    embd = _embd(out)
    assert np.isfinite(embd).all() and embd[7, 3] == pytest.approx(BIG, rel=2e-2)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    with serve() as h:
        yield h


def test_fetch_with_an_index_downloads_only_its_shards(
    hub: FakeHub, minilm_dir: Path, tmp_path: Path
) -> None:
    """Mistral-style repo: sharded weights named by the index plus consolidated.safetensors."""
    repo = tmp_path / "repo"
    shutil.copytree(minilm_dir, repo)
    shard = "model-00001-of-00001.safetensors"
    (repo / "model.safetensors").rename(repo / shard)
    with safe_open(str(repo / shard), framework="numpy") as f:
        names = list(f.keys())
    index = {"metadata": {}, "weight_map": {n: shard for n in names}}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copyfile(repo / shard, repo / "consolidated.safetensors")
    hub.add("mistralai/Tiny-Sharded", repo)
    path = fetch("mistralai/Tiny-Sharded", endpoint=hub.url)
    got = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert shard in got and "model.safetensors.index.json" in got and "tokenizer.json" in got
    assert "consolidated.safetensors" not in got
    assert not [r for r in hub.requests if "consolidated" in r]
    # What came down converts (the index is what the checkpoint reader follows).
    convert(path, tmp_path / "sharded.gguf", "f32", progress=False)
