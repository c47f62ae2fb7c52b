"""The registry's memory cap: weights, KV and prompt caches of loaded models stay under it
(real model)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from daemon.engine.errors import ModelUnavailable, NeverFits
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import GenerationRequest, SamplingParams
from tests.integration.test_prompt_cache import WORDS

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


def test_prompt_caches_share_what_the_cap_leaves(tmp_path: Path, model_path: Path) -> None:
    """Under --max-models-memory the prompt caches count: alone, a model's cache may fill
    what its weights and KV leave; a second model loading shrinks it to an equal share
    (whole models stay), and its unloading lets the cache grow again."""
    d = models(tmp_path, model_path)

    async def fill(lm: LoadedModel) -> None:
        # Four conversations over two slots: the last two take slots whose histories are saved.
        for i in range(4):
            text = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(120))
            h = lm.submit(GenerationRequest(lm.tokenize(text), 2, SamplingParams(temperature=0)))
            async for _ in h.chunks():
                pass

    async def main() -> None:
        probe = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d)
        one = (await probe.get("alpha")).static_bytes
        probe.close()
        cap = 2 * one + (8 << 20)
        share = (cap - 2 * one) // 2  # each cache's share with both models loaded
        reg = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d, max_memory=cap)
        alpha = await reg.get("alpha")
        await fill(alpha)
        alone = alpha.cache_bytes
        assert alone > share  # two saved conversations of ~130 tokens, 23 KB of KV each
        assert alpha.memory_bytes == alpha.static_bytes + alone
        await reg.get("beta")
        assert sorted(m.name for m in reg.loaded()) == ["alpha", "beta"]
        assert alpha.cache_bytes <= share and reg.memory_bytes() <= cap
        await reg.unload("beta")
        await fill(alpha)
        assert alpha.cache_bytes > share  # room again
        assert reg.memory_bytes() <= cap
        reg.close()

    asyncio.run(main())


def test_memory_cap_counts_system_memory_and_gpus_per_device(
    tmp_path: Path, model_path: Path
) -> None:
    """Issue 26: --max-models-memory bounds system memory; what the GPU fit puts on a device
    is that device's, bounded by its free memory. On a (made-up) device with room for all,
    three models fit under a cap that holds one and a half on the CPU; on a device with no
    room the same cap refuses a second model beside the default, as on a CPU. llama.cpp here
    has no GPU: the layers run on the CPU all the same, the accounting is what is tested."""
    from dataclasses import replace

    from daemon.engine.loading.fit import DeviceMemory
    from daemon.engine.native.llama import ModelOptions

    d = models(tmp_path, model_path)
    shutil.copy(model_path, d / "gamma.gguf")

    def on(free: int) -> EngineOptions:
        return replace(
            OPTIONS,
            model=ModelOptions(n_gpu_layers=None),
            devices=lambda: [DeviceMemory("FAKE0", free, 1 << 40)],
        )

    async def main() -> None:
        probe = ModelRegistry(d / "alpha.gguf", OPTIONS, models_dir=d)
        one = (await probe.get("alpha")).host_bytes
        probe.close()
        cap = int(one * 1.5)
        roomy = ModelRegistry(d / "alpha.gguf", on(1 << 40), models_dir=d, max_memory=cap)
        for name in ("alpha", "beta", "gamma"):
            lm = await roomy.get(name)
            assert lm.offload.layers == -1 and lm.offload.per_device["FAKE0"] > 0
            assert lm.host_bytes < lm.static_bytes
        assert sorted(m.name for m in roomy.loaded()) == ["alpha", "beta", "gamma"]
        assert roomy._host_bytes() <= cap
        roomy.close()
        full = ModelRegistry(d / "alpha.gguf", on(0), models_dir=d, max_memory=cap)
        assert (await full.get("alpha")).offload.offloaded == 0  # no room on the device
        with pytest.raises(NeverFits):  # the default stays, and two exceed the cap
            await full.get("beta")
        full.close()

    asyncio.run(main())
