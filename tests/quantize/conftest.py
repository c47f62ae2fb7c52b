"""Shared fixtures of the quantize tests: MiniLM converted (SmolLM2's exports are in
tests/conftest.py, shared with the LoRA tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quantize.convert import convert


@pytest.fixture(scope="session")
def minilm_ggufs(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """MiniLM converted by our converter to each of f32, f16 and q8_0."""
    out = tmp_path_factory.mktemp("minilm")
    return {
        t: convert(minilm_dir, out / f"minilm.{t}.gguf", t, progress=False)
        for t in ("f32", "f16", "q8_0")
    }
