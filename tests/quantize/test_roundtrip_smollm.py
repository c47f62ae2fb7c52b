"""SmolLM2 GGUF -> Hugging Face directory -> our converter -> GGUF must decode like the original."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from quantize.archs import permute_rope, unpermute_rope
from quantize.info import inspect_gguf
from quantize.quantize import quantize_gguf
from tests.quantize.llm import greedy, piece

PROMPTS = [
    "Q: The capital of France is?\nA:",
    "The quick brown fox",
    "def fibonacci(n):",
    "<|im_start|>user\nName a primary colour.<|im_end|>\n<|im_start|>assistant\n",
]


def test_export_is_a_plain_hf_checkpoint(smollm_hf: Path) -> None:
    config = json.loads((smollm_hf / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)
    assert config["tie_word_embeddings"] is True
    tok = json.loads((smollm_hf / "tokenizer.json").read_text())
    assert tok["model"]["type"] == "BPE" and len(tok["model"]["vocab"]) == 49152
    assert "<|im_start|>" in (smollm_hf / "tokenizer_config.json").read_text()


def test_converted_metadata_matches_original(smollm_gguf: Path, smollm_f32: Path) -> None:
    def kv(path: Path) -> dict[str, object]:
        reader = gguf.GGUFReader(path)
        out: dict[str, object] = {}
        for key, f in reader.fields.items():
            if not key.startswith(("llama.", "tokenizer.")):
                continue
            # Raw bytes of big arrays (tokens, merges): contents() would decode 100k strings.
            out[key] = (
                b"".join(bytes(f.parts[i]) for i in f.data) if len(f.data) > 1 else f.contents()
            )
        return out

    original, ours = kv(smollm_gguf), kv(smollm_f32)
    assert original.keys() <= ours.keys()
    for key, value in original.items():
        if isinstance(value, float):
            assert ours[key] == pytest.approx(value), key
        else:
            assert ours[key] == value, key


def test_converted_weights_equal_dequantized_original(smollm_gguf: Path, smollm_f32: Path) -> None:
    """Every tensor, Q/K permutation included, survives export + convert bit for bit."""
    ours = {t.name: t for t in gguf.GGUFReader(smollm_f32).tensors}
    original = gguf.GGUFReader(smollm_gguf).tensors
    assert sorted(ours) == sorted(t.name for t in original)
    for t in original:
        if t.name.startswith(("blk.0.", "blk.29.", "token_embd", "output_norm")):
            want = gguf.quants.dequantize(t.data, t.tensor_type)
            np.testing.assert_array_equal(np.asarray(ours[t.name].data), want, err_msg=t.name)


def test_greedy_output_equals_original(smollm_gguf: Path, smollm_f32: Path) -> None:
    # f32 matmuls vs Q4_1 x Q8_1 dot products: equal for short continuations, not forever.
    want = greedy(smollm_gguf, PROMPTS[:3], 5)
    got = greedy(smollm_f32, PROMPTS[:3], 5)
    assert got == want
    assert piece(smollm_f32, got[0]).startswith(" Paris")


def test_requantized_to_q4_1_is_the_original(
    smollm_gguf: Path, smollm_f32: Path, tmp_path: Path
) -> None:
    """Our f32 conversion quantized by llama.cpp to Q4_1 reproduces the shipped file's tensors."""
    out = quantize_gguf(
        smollm_f32, tmp_path / "smollm.Q4_1.gguf", "Q4_1", threads=2, progress=False
    )
    info = inspect_gguf(out)
    assert info.file_type == gguf.LlamaFileType.MOSTLY_Q4_1 and info.tensor_types["Q4_1"] == 210
    ours = {t.name: t for t in gguf.GGUFReader(out).tensors}
    for t in gguf.GGUFReader(smollm_gguf).tensors:
        assert ours[t.name].tensor_type == t.tensor_type, t.name
        assert np.array_equal(ours[t.name].data, t.data), t.name
    assert greedy(out, PROMPTS[::3], 6) == greedy(smollm_gguf, PROMPTS[::3], 6)


@pytest.mark.parametrize("shape", [(576, 8), (192, 5), (96,)])
@pytest.mark.parametrize("n_head", [1, 3])
def test_rope_permutation_round_trips(shape: tuple[int, ...], n_head: int) -> None:
    w = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    p = permute_rope(w, n_head)
    assert not np.array_equal(p, w)
    np.testing.assert_array_equal(unpermute_rope(p, n_head), w)
