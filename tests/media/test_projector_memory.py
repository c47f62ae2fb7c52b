"""A vision projector and its image embedding cache count under the memory cap, as the
model they belong to (real tiny VLM, real registry)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from daemon.engine.loading.loaded import EngineOptions
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.media import Medium
from tests.media.tiny_vlm import png_bytes, sample_image

OPTIONS = EngineOptions(ctx_size=256, parallel=1, threads=1, cache_ram=0)


def folder(tmp_path: Path, lm: Path, smollm: Path, projector: Path) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for name in ("alpha", "beta"):
        shutil.copy(smollm, d / f"{name}.gguf")
    shutil.copy(lm, d / "seer.gguf")
    shutil.copy(projector, d / "mmproj-seer.gguf")
    return d


def test_the_projector_and_its_embeddings_are_the_models_memory(
    tmp_path: Path, vlm_lm_path: Path, smollm_gguf: Path, mmproj: dict[str, Path]
) -> None:
    d = folder(tmp_path, vlm_lm_path, smollm_gguf, mmproj["f32"])

    async def main() -> None:
        reg = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d)
        seer = await reg.get("seer")
        projector = (d / "mmproj-seer.gguf").stat().st_size
        assert seer.projector_bytes == projector > 0
        kv = seer.model.kv_bytes(seer.ctx_size, *seer.kv_types)
        assert seer.static_bytes == seer.model.size_bytes + kv + projector
        before = seer.memory_bytes
        png = png_bytes(sample_image(seed=71))
        image = Medium(png, "digest-71")
        await asyncio.to_thread(seer.media_prompt, "<__media__>Hi", [image], None, "k")
        assert seer.cache_bytes > 0  # the encoded image is kept, and counted
        assert seer.memory_bytes == before + seer.cache_bytes
        reg.close()

    asyncio.run(main())


def test_a_projector_can_tip_a_model_over_the_cap(
    tmp_path: Path, vlm_lm_path: Path, smollm_gguf: Path, mmproj: dict[str, Path]
) -> None:
    """The cap holds alpha, beta and seer's language model, not seer's projector as well:
    loading seer unloads the idle beta (without the projector counted, all three fit)."""
    d = folder(tmp_path, vlm_lm_path, smollm_gguf, mmproj["f32"])

    async def main() -> None:
        probe = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d)
        one = (await probe.get("alpha")).memory_bytes
        seer = await probe.get("seer")
        seer_bytes, projector = seer.memory_bytes, seer.projector_bytes
        probe.close()
        cap = 2 * one + seer_bytes - projector // 2
        reg = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d, max_memory=cap)
        await reg.get("alpha")
        await reg.get("beta")
        assert sorted(m.name for m in reg.loaded()) == ["alpha", "beta"]
        await reg.get("seer")
        assert sorted(m.name for m in reg.loaded()) == ["alpha", "seer"]
        assert reg.memory_bytes() <= cap
        reg.close()

    asyncio.run(main())
    assert os.path.exists(d / "mmproj-seer.gguf")
