"""Which projector a model gets: --mmproj by name (or for the default model), else
mmproj-STEM.gguf beside STEM.gguf in the models folder, which is never served as a model."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import Settings, model_specs
from daemon.engine.loading.loaded import EngineOptions
from daemon.engine.loading.registry import ModelRegistry


def _registry(folder: Path, specs: tuple[str, ...] = (), **kw: object) -> ModelRegistry:
    return ModelRegistry(
        folder / "default.gguf",
        EngineOptions(),
        models_dir=folder,
        projectors=model_specs(list(specs), "--mmproj"),
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in ("default.gguf", "seer.gguf", "mmproj-seer.gguf", "plain.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    return tmp_path


def test_a_projector_beside_its_model_pairs_by_stem(folder: Path) -> None:
    reg = _registry(folder)
    names = {e.name for e in reg.entries()}
    assert names == {"default", "seer", "plain"}  # mmproj-seer is no model of its own
    assert reg.projector_of("seer", folder / "seer.gguf") == folder / "mmproj-seer.gguf"
    assert reg.projector_of("plain", folder / "plain.gguf") is None


def test_mmproj_flags_name_their_model(folder: Path) -> None:
    reg = _registry(
        folder, ("/x/default-proj.gguf", "plain=/x/plain-proj.gguf"), aliases={"eyes": "seer"}
    )
    assert reg.projector_of("default", folder / "default.gguf") == Path("/x/default-proj.gguf")
    assert reg.projector_of("plain", folder / "plain.gguf") == Path("/x/plain-proj.gguf")
    # An alias of a model pairs as the model does (by its file's stem).
    assert reg.projector_of("seer", folder / "seer.gguf") == folder / "mmproj-seer.gguf"


def test_two_projectors_for_one_model_are_refused() -> None:
    with pytest.raises(ValueError, match="two projectors"):
        Settings(mmproj=["a.gguf", "b.gguf"])
    with pytest.raises(ValueError, match="PATH"):
        Settings(mmproj=["name="])
