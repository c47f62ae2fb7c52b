"""Files in the models folder that are not models: the registry serves around them."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import EngineOptions
from daemon.engine.loading.registry import ModelRegistry


@pytest.mark.parametrize("content", [b"", b"GGUF", b"GGUF\x03\x00\x00\x00", b"\x00" * 7])
def test_truncated_gguf_never_breaks_a_rescan(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "broken.gguf").write_bytes(content)
    reg = ModelRegistry(embedded_model_path(), EngineOptions(), models_dir=tmp_path)
    reg.rescan()
    assert {e.name for e in reg.entries()} == {embedded_model_path().stem, "broken"}
