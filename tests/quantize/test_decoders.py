"""Tiny random Mistral/Qwen2/Llama 3.1 checkpoints: converted metadata, and llama.cpp's logits
equal an independent numpy forward pass (so Q/K permutation, biases and RoPE are right)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from quantize.__main__ import main
from quantize.archs import LLAMA
from quantize.convert import convert
from quantize.rope import llama3_factors, warn_sliding_window
from tests.quantize.decoder_reference import decoder_reference, inv_freq
from tests.quantize.llm import all_logits
from tests.quantize.tiny import BASE, tiny_checkpoint, trim_tokenizer

VOCAB = 2048  # SmolLM2's first 2048 tokens: quick to convert and to read back
TOKENS = [1, 504, 1458, 17, 916, 28, 2047, 2, 812, 812, 7, 300, 15, 1999]
LLAMA3 = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
# name -> (HF architecture, model_type, config overrides)
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    # Explicit head_dim != hidden / heads (as Mistral Nemo), sliding window beyond the context.
    "mistral": ("MistralForCausalLM", "mistral", {"head_dim": 32, "sliding_window": 4096}),
    "qwen2": (
        "Qwen2ForCausalLM",
        "qwen2",
        {"tie_word_embeddings": True, "rope_theta": 1e6, "rms_norm_eps": 1e-6},
    ),
    # rope_theta 100 and a 64-token original context put all three llama3 regimes in 16 dims;
    # attention_bias: the Q/K biases must be permuted like the weights.
    "llama3": (
        "LlamaForCausalLM",
        "llama",
        {"rope_theta": 100.0, "rope_scaling": LLAMA3, "attention_bias": True},
    ),
    "qwen2_linear": (
        "Qwen2ForCausalLM",
        "qwen2",
        {"rope_scaling": {"type": "linear", "factor": 4.0}},
    ),
}


@pytest.fixture(scope="module")
def tokenizer(smollm_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's byte-level BPE tokenizer cut to VOCAB tokens."""
    return trim_tokenizer(smollm_tokenizer, tmp_path_factory.mktemp("tok") / "t", VOCAB)


@pytest.fixture(scope="module")
def tiny(tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """name -> (HF checkpoint directory, its f32 GGUF)."""
    root = tmp_path_factory.mktemp("tiny")
    out: dict[str, tuple[Path, Path]] = {}
    for seed, (name, (arch, model_type, overrides)) in enumerate(MODELS.items()):
        src = tiny_checkpoint(root / name, tokenizer, arch, model_type, seed, **overrides)
        out[name] = (src, convert(src, root / f"{name}.f32.gguf", "f32", progress=False))
    return out


def _kv(path: Path) -> dict[str, Any]:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.")}


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: np.asarray(t.data) for t in gguf.GGUFReader(path).tensors}


def test_mistral_metadata(tiny: dict[str, tuple[Path, Path]]) -> None:
    kv = _kv(tiny["mistral"][1])
    assert kv["general.architecture"] == "llama"
    assert kv["llama.block_count"] == 2 and kv["llama.embedding_length"] == 64
    assert kv["llama.feed_forward_length"] == 128 and kv["llama.context_length"] == 512
    assert (kv["llama.attention.head_count"], kv["llama.attention.head_count_kv"]) == (4, 2)
    assert kv["llama.attention.key_length"] == kv["llama.attention.value_length"] == 32
    assert kv["llama.rope.dimension_count"] == 32
    assert kv["llama.rope.freq_base"] == 10000.0
    assert kv["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert not any("rope.scaling" in k for k in kv)
    tensors = _tensors(tiny["mistral"][1])
    assert tensors["blk.0.attn_q.weight"].shape == (128, 64)  # numpy order: (rows, cols)
    assert tensors["blk.1.attn_k.weight"].shape == (64, 64)
    assert "output.weight" in tensors and "rope_freqs.weight" not in tensors


def test_qwen2_metadata_and_biases(tiny: dict[str, tuple[Path, Path]]) -> None:
    src, out = tiny["qwen2"]
    kv = _kv(out)
    assert kv["general.architecture"] == "qwen2"
    assert (kv["qwen2.attention.head_count"], kv["qwen2.attention.head_count_kv"]) == (4, 2)
    assert kv["qwen2.rope.freq_base"] == 1e6 and kv["qwen2.rope.dimension_count"] == 16
    assert kv["qwen2.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert kv["qwen2.vocab_size"] == VOCAB
    tensors = _tensors(out)
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    from safetensors import safe_open

    with safe_open(str(src / "model.safetensors"), framework="numpy") as f:
        for i in range(2):
            for m in "qkv":
                hf = f.get_tensor(f"model.layers.{i}.self_attn.{m}_proj.bias")
                # NEOX RoPE in llama.cpp's qwen2: biases and weights stay unpermuted.
                np.testing.assert_array_equal(tensors[f"blk.{i}.attn_{m}.bias"], hf)


def _rel_diff(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", list(MODELS))
def test_logits_equal_numpy_reference(name: str, tiny: dict[str, tuple[Path, Path]]) -> None:
    src, out = tiny[name]
    got = all_logits(out, TOKENS)
    want = decoder_reference(src, TOKENS)
    assert got.shape == want.shape == (len(TOKENS), VOCAB)
    assert _rel_diff(got, want) < 1e-5, _rel_diff(got, want)  # f32 throughout: ~3e-7 seen
    assert (got.argmax(-1) == want.argmax(-1)).all()
    # Control: the other RoPE pairing convention is far off, so the comparison can fail.
    assert _rel_diff(got, decoder_reference(src, TOKENS, rope="interleaved")) > 1e-2


def test_llama3_rope_freqs_tensor(tiny: dict[str, tuple[Path, Path]]) -> None:
    src, out = tiny["llama3"]
    config = json.loads((src / "config.json").read_text())
    factors = _tensors(out)["rope_freqs.weight"]
    assert factors.dtype == np.float32 and factors.shape == (8,)
    # llama.cpp divides each frequency by its factor; transformers blends scaled frequencies.
    plain = inv_freq({"rope_theta": 100.0}, 16)
    np.testing.assert_allclose(factors, plain / inv_freq(config, 16), rtol=1e-6)
    assert factors[0] == 1.0 and factors[-1] == 8.0 and 1.0 < factors[2] < factors[3] < 8.0
    assert not any("rope.scaling" in k for k in _kv(out))
    # Control: without the factors the logits would be clearly different.
    unscaled = {**config, "rope_scaling": None}
    (src / "config.json").write_text(json.dumps(unscaled))
    try:
        off = _rel_diff(all_logits(out, TOKENS), decoder_reference(src, TOKENS))
    finally:
        (src / "config.json").write_text(json.dumps(config))
    assert off > 1e-2


def test_llama3_factors_formula() -> None:
    """Llama 3.1 8B's scaling: 1 for short wavelengths, factor for long, a blend between."""
    config = {
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "rope_theta": 500000.0,
        "rope_scaling": {**LLAMA3, "original_max_position_embeddings": 8192},
    }
    factors = llama3_factors(config).astype(np.float64)
    freq = 1.0 / 500000.0 ** (np.arange(0, 128, 2) / 128)
    wavelen = 2 * np.pi / freq
    np.testing.assert_array_equal(factors[wavelen < 8192 / 4], 1.0)
    np.testing.assert_array_equal(factors[wavelen > 8192], 8.0)
    mid = (wavelen >= 2048) & (wavelen <= 8192)
    smooth = (8192 / wavelen[mid] - 1.0) / 3.0
    np.testing.assert_allclose(factors[mid], 1.0 / ((1 - smooth) / 8.0 + smooth), rtol=1e-6)
    assert mid.sum() >= 3 and np.all(np.diff(factors) >= 0)


def test_linear_scaling_metadata(tiny: dict[str, tuple[Path, Path]]) -> None:
    kv = _kv(tiny["qwen2_linear"][1])
    assert kv["qwen2.rope.scaling.type"] == "linear"
    assert kv["qwen2.rope.scaling.factor"] == 4.0


@pytest.mark.parametrize(
    ("arch", "scaling", "words"),
    [
        ("Qwen2ForCausalLM", {"type": "yarn", "factor": 4.0}, "'yarn'"),
        ("LlamaForCausalLM", {"rope_type": "dynamic", "factor": 2.0}, "'dynamic'"),
        ("LlamaForCausalLM", {"rope_type": "longrope", "factor": 2.0}, "'longrope'"),
        ("Qwen2ForCausalLM", LLAMA3, "'llama3'"),
        ("LlamaForCausalLM", {"rope_type": "linear"}, "'factor'"),
    ],
)
def test_unconvertible_rope_scaling_is_refused(
    arch: str,
    scaling: dict[str, Any],
    words: str,
    tokenizer: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model_type = "qwen2" if arch.startswith("Qwen2") else "llama"
    src = tiny_checkpoint(tmp_path / "m", tokenizer, arch, model_type, rope_scaling=scaling)
    assert main(["-q", "convert", str(src), "-o", str(tmp_path / "o.gguf")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rope_scaling" in err[0] and words in err[0], err
    assert list(tmp_path.glob("*.gguf*")) == []


def test_transformers5_rope_parameters() -> None:
    """transformers 5 moves rope_theta and the scaling into one rope_parameters dict."""
    base = {k: v for k, v in BASE.items() if k != "rope_theta"} | {"vocab_size": VOCAB}
    scaled = {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}
    kv = LLAMA.kv_pairs(base | {"rope_parameters": scaled})
    assert kv["llama.rope.freq_base"] == 5e5
    assert (kv["llama.rope.scaling.type"], kv["llama.rope.scaling.factor"]) == ("linear", 2.0)
    plain = LLAMA.kv_pairs(base | {"rope_theta": 1e4, "rope_scaling": {"rope_type": "default"}})
    assert not any("scaling" in k for k in plain) and plain["llama.rope.freq_base"] == 1e4


def test_short_sliding_window_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="quantize.rope"):
        warn_sliding_window({"sliding_window": 4096, "max_position_embeddings": 32768})
        warn_sliding_window({"sliding_window": 32768, "max_position_embeddings": 32768})
        warn_sliding_window({"sliding_window": None, "max_position_embeddings": 32768})
    assert [r.getMessage() for r in caplog.records] == [
        "sliding_window 4096 < context 32768: llama.cpp attends to the full context instead"
    ]
