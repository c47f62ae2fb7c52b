"""Fixtures shared by the e2e modules: GGUF rewrites more than one module serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_reasoning import make_thinking_gguf


@pytest.fixture(scope="session")
def thinker_gguf(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded model with THINKING_TEMPLATE (tests/e2e/test_reasoning.py), rewritten once
    per run for every server that serves it (the reasoning and dialect-fuzz modules)."""
    return make_thinking_gguf(model_path, tmp_path_factory.mktemp("thinker") / "thinker.gguf")
