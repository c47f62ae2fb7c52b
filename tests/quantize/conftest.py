"""Shared fixtures of the quantize tests: MiniLM converted (the conversions themselves, and
SmolLM2's exports, are in tests/conftest.py, shared with the other suites)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_ggufs(minilm_gguf: Callable[[str], Path]) -> dict[str, Path]:
    """MiniLM converted by our converter to each of f32, f16 and q8_0."""
    return {t: minilm_gguf(t) for t in ("f32", "f16", "q8_0")}
