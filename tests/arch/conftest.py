"""The tiny architecture models, written once per session from the embedded tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.arch.models import ARCHS, write_model


@pytest.fixture(scope="session")
def arch_models(smollm_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """kind -> the tiny GGUF of that architecture class."""
    d = tmp_path_factory.mktemp("arch")
    return {kind: write_model(kind, d / f"tiny-{kind}.gguf", smollm_gguf) for kind in ARCHS}
