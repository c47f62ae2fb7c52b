"""The registry's memory cap: weights + KV of loaded models stay under it (real model)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.engine.errors import ModelUnavailable
from daemon.engine.loaded import EngineOptions
from daemon.engine.registry import ModelRegistry

OPTIONS = EngineOptions(ctx_size=256, parallel=2)


def models(tmp_path: Path, model_path: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for name in ("alpha", "beta"):
        shutil.copy(model_path, d / f"{name}.gguf")
    return d


def test_memory_cap_evicts_idle_models(tmp_path: Path, model_path: Path) -> None:
    d = models(tmp_path, model_path)

    async def main() -> None:
        probe = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d)
        one = (await probe.get("alpha")).memory_bytes
        probe.close()
        assert one > model_path.stat().st_size  # weights plus the KV cache
        reg = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d, max_memory=int(one * 2.5))
        await reg.get("alpha")
        await reg.get("beta")
        assert sorted(m.name for m in reg.loaded()) == ["alpha", "beta"]
        shutil.copy(model_path, d / "gamma.gguf")
        reg.rescan()
        await reg.get("gamma")  # over the cap: beta (idle, not the default) goes
        assert sorted(m.name for m in reg.loaded()) == ["alpha", "gamma"]
        assert reg.memory_bytes() <= reg.max_memory
        reg.close()

    asyncio.run(main())


def test_model_larger_than_the_cap_is_refused(tmp_path: Path, model_path: Path) -> None:
    d = models(tmp_path, model_path)

    async def main() -> None:
        reg = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d, max_memory=1)
        with pytest.raises(ModelUnavailable):
            await reg.get("beta")
        assert reg.loaded() == []
        reg.close()

    asyncio.run(main())
