"""A request holds its models: leases, closed models, failed loads, the store across unloads."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from daemon.engine.client import EngineClient
from daemon.engine.errors import ModelUnavailable
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.native.llama import Model
from daemon.engine.types import GenerationRequest, SamplingParams
from daemon.errors import EdgedError

OPTIONS = EngineOptions(ctx_size=256, parallel=1)
GREEDY = SamplingParams(temperature=0.0)


def models(tmp_path: Path, model_path: Path, names: tuple[str, ...]) -> Path:
    d = tmp_path / "models"
    d.mkdir()
    for name in names:
        (d / f"{name}.gguf").symlink_to(model_path)
    return d


def test_a_leased_model_is_never_evicted(tmp_path: Path, model_path: Path) -> None:
    """Row 3: model M and safety model G under one request, a third model loaded, a cap of
    loaded models: loading G must evict the third model, never M."""
    d = models(tmp_path, model_path, ("main", "guard", "third"))

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d, max_loaded=3)
        client = EngineClient(reg)
        await reg.get(None)
        try:
            await reg.get("main")
            await reg.get("third")  # more recently used than main
            async with client.lease("main") as m, client.lease("guard") as g:
                assert sorted(x.name for x in reg.loaded()) == sorted(
                    [reg.default_name, "guard", "main"]
                )
                m.tokenize("still usable")
                g.tokenize("and this one")
                # Everything else is leased or the default: a fourth model must wait.
                with pytest.raises(ModelUnavailable):
                    async with client.lease("third"):
                        pass
            assert reg.leases("main") == 0 and reg.leases("guard") == 0
            assert await reg.reap(now=10**9) == []  # keep-alive unset: nothing expires
            reg.keep_alive = 0.0
            assert sorted(await reg.reap()) == ["guard", "main"]
        finally:
            reg.close()

    asyncio.run(main())


def test_keep_alive_skips_leased_models(tmp_path: Path, model_path: Path) -> None:
    d = models(tmp_path, model_path, ("other",))

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d, keep_alive=0.0)
        try:
            async with EngineClient(reg).lease("other"):
                assert await reg.reap() == []
                assert reg.is_loaded("other")
            assert await reg.reap() == ["other"]
        finally:
            reg.close()

    asyncio.run(main())


def test_the_store_outlives_an_unload(tmp_path: Path, model_path: Path) -> None:
    d = models(tmp_path, model_path, ("other",))

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d)
        try:
            lm = await reg.get("other")
            key = ("k", "id")
            lm.store.claim(key)
            h = lm.submit(GenerationRequest(lm.tokenize("Hello"), 4, GREEDY, keep=True))
            h.add_done_callback(lambda h: lm.store.release(key, h.saved))
            async for _ in h.chunks():
                pass
            await reg.unload("other")
            again = await reg.get("other")
            assert again is not lm
            assert again.store.claim(key) is not None
        finally:
            reg.close()

    asyncio.run(main())


def test_a_failed_context_frees_the_weights(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    freed: list[Model] = []
    real_close = Model.close

    def spy(self: Model) -> None:
        freed.append(self)
        real_close(self)

    monkeypatch.setattr(Model, "close", spy)
    # More sequences than llama.cpp allows in one context: it cannot create the context.
    with pytest.raises(EdgedError):
        LoadedModel("refused", model_path, EngineOptions(ctx_size=16, parallel=1000))
    assert len(freed) == 1 and freed[0].ptr is None


def test_unload_under_a_running_generation_keeps_its_state(
    tmp_path: Path, model_path: Path
) -> None:
    """Shutdown waits for the decode; the request ends with an error, its id keeps its tokens."""
    d = models(tmp_path, model_path, ("other",))

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d)
        try:
            lm = await reg.get("other")
            key = ("k", "long")
            lm.store.claim(key)
            prompt = lm.tokenize("Count: 1, 2, 3,")
            h = lm.submit(GenerationRequest(prompt, 200, GREEDY, keep=True))
            h.add_done_callback(lambda h: lm.store.release(key, h.saved))
            ids: list[int] = []
            with pytest.raises(ModelUnavailable):
                async for c in h.chunks():
                    ids.extend(c.token_ids)
                    if len(ids) >= 3:
                        await reg.unload("other")
            kept = reg.store("other").claim(key)
            assert kept is not None
            assert (kept.tokens + kept.pending)[: len(prompt) + len(ids)] == tuple(prompt + ids)
        finally:
            reg.close()

    asyncio.run(main())


def test_a_request_that_can_never_fit_is_told_so(tmp_path: Path, model_path: Path) -> None:
    """Issue 26 item 4: a model and a safety model in one request beside the default model
    (which stays loaded) under a cap of two can never be served: a 400 naming the cap, not
    a 503 "retry shortly". While another request holds the blocking model, waiting helps
    (503); once it is idle, it is evicted."""
    from daemon.engine.client import LeaseScope
    from daemon.engine.errors import NeverFits

    d = models(tmp_path, model_path, ("main", "guard"))

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d, max_loaded=2)
        client = EngineClient(reg)
        await reg.get(None)
        try:
            request = LeaseScope()
            await client.acquire("main", request)
            with pytest.raises(NeverFits) as info:
                await client.acquire("guard", request)
            assert "--max-loaded-models is 2" in info.value.message
            assert info.value.subject == "model"
            assert sorted(m.name for m in reg.loaded()) == sorted([reg.default_name, "main"])
            # Another request's lease on `main`: the guard's request may retry later.
            with pytest.raises(ModelUnavailable):
                await client.acquire("guard", LeaseScope())
            request.close()
            later = LeaseScope()
            assert (await client.acquire("guard", later)).name == "guard"  # main evicted
            later.close()
        finally:
            reg.close()

    asyncio.run(main())


def test_never_fitting_under_the_memory_cap(tmp_path: Path, model_path: Path) -> None:
    from daemon.engine.client import LeaseScope
    from daemon.engine.errors import NeverFits

    d = models(tmp_path, model_path, ("main", "guard"))

    async def main() -> None:
        probe = ModelRegistry(model_path, OPTIONS, models_dir=d)
        await probe.get(None)
        one = probe.memory_bytes()
        probe.close()
        # Room for two models, not three: the default, main, and guard in one request.
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d, max_memory=int(one * 2.5))
        client = EngineClient(reg)
        await reg.get(None)
        try:
            request = LeaseScope()
            await client.acquire("main", request)
            with pytest.raises(NeverFits) as info:
                await client.acquire("guard", request)
            assert "--max-models-memory" in info.value.message
            request.close()
        finally:
            reg.close()

    asyncio.run(main())


def test_a_replaced_file_serves_new_requests_and_lets_old_ones_finish(
    tmp_path: Path, model_path: Path
) -> None:
    """Issue 25: a model file replaced under its name (a re-pull, an operator's update) takes
    effect for new requests at once, while the requests already holding the old model finish
    on it; the old one is freed once they end, never under them."""
    import os
    import shutil

    from daemon.engine.client import LeaseScope

    d = tmp_path / "models"
    d.mkdir()
    shutil.copyfile(model_path, d / "m.gguf")

    async def main() -> None:
        reg = ModelRegistry(model_path, OPTIONS, models_dir=d)
        client = EngineClient(reg)
        try:
            first = LeaseScope()
            old = await client.acquire("m", first)
            h = old.submit(GenerationRequest(old.tokenize("1, 2, 3,"), 24, GREEDY))
            # The operator swaps in another file (one byte changed) under the same name.
            new_file = tmp_path / "m.new"
            shutil.copyfile(model_path, new_file)
            with new_file.open("r+b") as f:
                f.seek(-4096, 2)
                b = f.read(1)
                f.seek(-4096, 2)
                f.write(bytes([b[0] ^ 1]))
            os.replace(new_file, d / "m.gguf")
            second = LeaseScope()
            new = await client.acquire("m", second)
            assert new is not old and new.identity != old.identity
            assert reg.leases("m") == 1  # the new model's; the old one counts its own
            out = [t async for c in h.chunks() for t in c.token_ids]
            assert len(out) == 24 and not old.closed  # finished on the old weights
            await reg.reap()
            assert not old.closed  # its request's lease is still held
            first.close()
            await reg.reap()
            assert old.closed and not new.closed
            assert reg.memory_bytes() == new.memory_bytes
            second.close()
        finally:
            reg.close()

    asyncio.run(main())


def test_device_memory_goes_to_the_model_in_use(tmp_path: Path, model_path: Path) -> None:
    """Issue 26: with GPU layers fitted (`auto`), an idle model holding device memory is
    unloaded so the next model fits the GPU whole; one in use keeps its memory and the
    newcomer gets the layers that fit. A made-up device whose free memory is what the loaded
    models leave (llama.cpp here has no GPU: the layers run on the CPU all the same)."""
    from dataclasses import replace

    from daemon.engine.client import LeaseScope
    from daemon.engine.loading.fit import DeviceMemory, margin
    from daemon.engine.native.llama import ModelOptions

    d = models(tmp_path, model_path, ("a", "b"))
    holder: list[ModelRegistry] = []
    total = 0

    def devices() -> list[DeviceMemory]:
        used = sum(lm.offload.gpu_bytes for lm in holder[0].loaded())
        return [DeviceMemory("FAKE0", total - used, total)]

    opts = replace(OPTIONS, model=ModelOptions(n_gpu_layers=None), devices=devices)

    async def main() -> None:
        nonlocal total
        reg = ModelRegistry(model_path, opts, models_dir=d, max_loaded=3)
        holder.append(reg)
        probe = ModelRegistry(
            model_path,
            replace(opts, devices=lambda: [DeviceMemory("FAKE0", 1 << 40, 1 << 40)]),
            models_dir=d,
        )
        one = (await probe.get("a")).offload.gpu_bytes
        probe.close()
        # Room for one model's layers beside the margin, not two: the default stays on the CPU.
        total = int((one * 1.5 + (256 << 20)) / 0.95)
        assert one * 2 > total - margin(DeviceMemory("x", total, total))
        client = EngineClient(reg)
        try:
            holder_scope = LeaseScope()
            a = await client.acquire("a", holder_scope)
            assert a.offload.layers == -1  # the whole model on the (made-up) GPU
            b_scope = LeaseScope()
            b = await client.acquire("b", b_scope)  # a is in use: it keeps its memory
            assert reg.is_loaded("a") and 0 <= b.offload.offloaded < b.offload.n_layers
            b_scope.close()
            holder_scope.close()
            await reg.unload("b")
            c_scope = LeaseScope()
            b2 = await client.acquire("b", c_scope)  # a is idle now: it gives way
            assert not reg.is_loaded("a") and b2.offload.layers == -1
            c_scope.close()
        finally:
            reg.close()

    asyncio.run(main())
