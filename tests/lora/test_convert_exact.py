"""convert-lora writes llama.cpp's adapter layout, and base + adapter at scale s computes the
same logits as the weights merged in Hugging Face space: W + s·(alpha/r)·B·A, converted."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import gguf
import numpy as np
import pytest

from daemon.engine.native.llama import Adapter, Batch, Context, ContextOptions, Model, ModelOptions
from quantize.__main__ import main
from quantize.convert import convert
from quantize.errors import BrokenCheckpoint
from quantize.lora import convert_lora
from tests.lora.peft import merged_checkpoint, random_peft
from tests.quantize.tiny import tiny_checkpoint, trim_tokenizer

VOCAB = 2048
TOKENS = [1, 504, 1458, 17, 916, 28, 2047, 2, 812, 812, 7, 300, 15, 1999]
SCALE = 0.7
# F32 weights, F32 KV, no flash attention: the two paths differ only in summation order
# (x·W + s·(x·Aᵀ)·Bᵀ against x·(W + s·B·A)). Measured: max |Δ| 1.7e-6 on logits up to 4.5
# (the adapter itself moves them by up to 2.8); an F16 adapter 1.6e-3.
TOLERANCE = 1e-4
F16_TOLERANCE = 1e-2


@contextmanager
def _context(path: Path, adapter: Path | None, scale: float) -> Iterator[Context]:
    model = Model(path, ModelOptions(extra_buffers=False))
    lora = Adapter(model, adapter) if adapter is not None else None
    ctx = Context(
        model,
        ContextOptions(
            n_ctx=64,
            n_batch=64,
            n_ubatch=64,
            n_seq_max=1,
            n_threads=2,
            n_threads_batch=2,
            type_k="f32",
            type_v="f32",
        ),
    )
    try:
        if lora is not None:
            ctx.set_adapters([(lora, scale)])
        yield ctx
    finally:
        ctx.close()
        if lora is not None:
            lora.close()
        model.close()


def logits(path: Path, tokens: list[int], adapter: Path | None = None, scale: float = 1.0):
    """Logits of every position, one batch, through edged's own llama wrappers."""
    with _context(path, adapter, scale) as ctx:
        batch = Batch(len(tokens))
        try:
            for i, t in enumerate(tokens):
                batch.add(t, i, 0, True)
            assert ctx.decode(batch) == 0
            return np.stack([ctx.logits_np(i).astype(np.float64) for i in range(len(tokens))])
        finally:
            batch.close()


@pytest.fixture(scope="module")
def tiny(smollm_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama (GQA: Q and K permuted differently), a random adapter on every
    projection of every block, the adapter's GGUF, and the merged model's GGUF."""
    root = tmp_path_factory.mktemp("lora")
    tok = trim_tokenizer(smollm_tokenizer, root / "tok", VOCAB)
    base = tiny_checkpoint(root / "base", tok, "LlamaForCausalLM", "llama")
    cfg = json.loads((base / "config.json").read_text())
    peft = random_peft(root / "peft", cfg, r=4, alpha=16.0, strength=0.5, base=str(base))
    merged = merged_checkpoint(base, peft, root / "merged", SCALE)
    return {
        "base": convert(base, root / "base.gguf", "f32", progress=False),
        "merged": convert(merged, root / "merged.gguf", "f32", progress=False),
        "adapter": convert_lora(peft, root / "adapter.gguf", None, "f32", progress=False),
        "peft": peft,
        "hf": base,
    }


def test_adapter_gguf_layout(tiny: dict[str, Path]) -> None:
    """What llama.cpp's convert_lora_to_gguf.py writes: type, alpha, lora_a (r×in), lora_b."""
    reader = gguf.GGUFReader(tiny["adapter"])

    def kv(key: str) -> object:
        f = reader.fields[key]
        return f.contents()

    assert kv("general.type") == "adapter"
    assert kv("general.architecture") == "llama"
    assert kv("adapter.type") == "lora"
    assert kv("adapter.lora.alpha") == pytest.approx(16.0)
    shapes = {t.name: tuple(int(x) for x in reversed(t.shape)) for t in reader.tensors}
    assert shapes["blk.0.attn_q.weight.lora_a"] == (4, 64)  # numpy order: r × in
    assert shapes["blk.0.attn_q.weight.lora_b"] == (64, 4)  # out × r
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (4, 128)
    assert len(shapes) == 2 * 7 * 2  # A and B of 7 projections in 2 blocks


def test_adapter_logits_equal_merged_weights(tiny: dict[str, Path]) -> None:
    with_adapter = logits(tiny["base"], TOKENS, tiny["adapter"], SCALE)
    merged = logits(tiny["merged"], TOKENS)
    base = logits(tiny["base"], TOKENS)
    # The adapter matters (far beyond the tolerance), and it is exactly the merge.
    assert np.abs(with_adapter - base).max() > 1000 * TOLERANCE
    np.testing.assert_allclose(with_adapter, merged, rtol=0, atol=TOLERANCE)
    assert with_adapter.argmax(-1).tolist() == merged.argmax(-1).tolist()


def test_scale_is_linear_in_the_merge(tiny: dict[str, Path], tmp_path: Path) -> None:
    """A second scale (negative, even) also equals its own merge: the scale is not fixed."""
    merged = merged_checkpoint(tiny["hf"], tiny["peft"], tmp_path / "m", -1.3)
    gguf_path = convert(merged, tmp_path / "m.gguf", "f32", progress=False)
    np.testing.assert_allclose(
        logits(tiny["base"], TOKENS, tiny["adapter"], -1.3),
        logits(gguf_path, TOKENS),
        rtol=0,
        atol=TOLERANCE,
    )


def test_cli_convert_lora_f16(tiny: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "a16.gguf"
    rc = main(["-q", "convert-lora", str(tiny["peft"]), "--base", str(tiny["hf"]), "-o", str(out)])
    assert rc == 0
    reader = gguf.GGUFReader(out)
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16}
    # F16 rounding of A and B only: still the merge, within F16's precision.
    np.testing.assert_allclose(
        logits(tiny["base"], TOKENS, out, SCALE),
        logits(tiny["merged"], TOKENS),
        rtol=0,
        atol=F16_TOLERANCE,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"use_dora": True}, "use_dora"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"r": 0}, "r must be"),
        ({"peft_type": "IA3"}, "not LORA"),
        ({"base_model_name_or_path": "/nonexistent"}, "--base"),
    ],
)
def test_refused_adapters(
    tiny: dict[str, Path], tmp_path: Path, change: dict, message: str
) -> None:
    src = tmp_path / "peft"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(
        (tiny["peft"] / "adapter_model.safetensors").read_bytes()
    )
    cfg = json.loads((tiny["peft"] / "adapter_config.json").read_text())
    (src / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    with pytest.raises(BrokenCheckpoint, match=message):
        convert_lora(src, tmp_path / "out.gguf", None, "f32", progress=False)
    assert not (tmp_path / "out.gguf").exists()


# SmolLM2 itself (30 blocks, 576 wide, GQA 9/3): its weights exported from the embedded GGUF
# to a Hugging Face directory (F32), a random rank-8 adapter on all seven projections of
# every block, and the merge W + s·(alpha/r)·B·A made in Hugging Face space and converted.
SMOLLM_SCALE = 0.6
# Thirty blocks of F32 sums in another order: measured max |Δ| 3.7e-5 (AVX2 build) on logits
# up to 36.5, while the adapter moves them by up to 7.2. The bound leaves room for other SIMD.
SMOLLM_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def smollm_lora(
    smollm_hf: Path, smollm_f32: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("smollm_lora_exact")
    cfg = json.loads((smollm_hf / "config.json").read_text())
    peft = random_peft(
        root / "peft", cfg, r=8, alpha=16.0, strength=0.3, seed=7, base=str(smollm_hf)
    )
    merged = merged_checkpoint(smollm_hf, peft, root / "merged", SMOLLM_SCALE)
    out = {
        "base": smollm_f32,
        "merged": convert(merged, root / "merged.gguf", "f32", progress=False),
        "adapter": convert_lora(peft, root / "adapter.gguf", None, "f32", progress=False),
    }
    shutil.rmtree(merged)  # 540 MB of safetensors nobody reads again
    return out


def test_smollm2_adapter_logits_equal_merged_weights(smollm_lora: dict[str, Path]) -> None:
    model = Model(smollm_lora["base"], ModelOptions(extra_buffers=False))
    try:
        tokens = model.tokenize(
            "<|im_start|>user\nWhy do llamas hum at night?<|im_end|>\n<|im_start|>assistant\n",
            add_special=False,
        )
    finally:
        model.close()
    with_adapter = logits(smollm_lora["base"], tokens, smollm_lora["adapter"], SMOLLM_SCALE)
    merged = logits(smollm_lora["merged"], tokens)
    base = logits(smollm_lora["base"], tokens)
    delta = np.abs(with_adapter - merged).max()
    assert np.abs(with_adapter - base).max() > 100 * SMOLLM_TOLERANCE, "the adapter must matter"
    assert delta <= SMOLLM_TOLERANCE, f"adapter vs merged weights: max |Δ| {delta:.2e}"
    assert with_adapter.argmax(-1).tolist() == merged.argmax(-1).tolist()
