"""GPU layers that fit by themselves (issue 26): the plan on made-up device tables, the
header estimate on the real SmolLM2, and `auto` on this CPU build (0 layers, nothing breaks)."""

from __future__ import annotations

import pytest

from daemon.config import Settings, embedded_model_path
from daemon.engine.loading.fit import (
    MIN_CTX,
    DeviceMemory,
    ModelShape,
    compute_bytes,
    margin,
    model_shape,
    plan_offload,
)

GiB, MiB = 1 << 30, 1 << 20
# A Llama-3-8B-like model at Q4: 32 layers of ~135 MiB, a 0.5 GiB head, 128 KiB KV per token.
BIG = ModelShape(
    n_layers=32,
    layer_bytes=135 * MiB,
    output_bytes=512 * MiB,
    kv_bytes_per_token_layer=4096.0,
    n_embd=4096,
    n_vocab=128256,
    n_ctx_train=8192,
)


def whole(shape: ModelShape, ctx: int, par: int) -> int:
    kv = int(shape.kv_bytes_per_token_layer * ctx * par * shape.n_layers)
    return shape.n_layers * shape.layer_bytes + shape.output_bytes + kv + compute_bytes(shape, 512)


def test_the_whole_model_fits_a_large_card() -> None:
    card = DeviceMemory("CUDA0", 22 * GiB, 24 * GiB)
    plan = plan_offload(BIG, [card], 4096, 8, may_shrink=True)
    assert plan.layers == -1 and plan.offloaded == 32
    assert (plan.ctx_size, plan.parallel) == (4096, 8)  # nothing needed to shrink
    assert plan.gpu_bytes == whole(BIG, 4096, 8) <= card.free - margin(card)
    assert plan.per_device == {"CUDA0": plan.gpu_bytes}


def test_some_layers_fit_a_laptop_card() -> None:
    card = DeviceMemory("CUDA0", int(3.5 * GiB), 4 * GiB)
    plan = plan_offload(BIG, [card], 4096, 8, may_shrink=False)
    assert 0 < plan.layers < 32 and plan.offloaded == plan.layers
    per_layer = BIG.layer_bytes + int(BIG.kv_bytes_per_token_layer * 4096 * 8)
    budget = card.free - margin(card)
    assert plan.layers * per_layer + compute_bytes(BIG, 512) <= budget
    assert (plan.layers + 1) * per_layer + compute_bytes(BIG, 512) > budget  # as many as fit
    assert (plan.ctx_size, plan.parallel) == (4096, 8)  # the operator set them: kept


def test_slots_and_context_shrink_only_where_neither_was_set() -> None:
    card = DeviceMemory("CUDA0", 6 * GiB, 8 * GiB)
    assert whole(BIG, 4096, 8) > card.free - margin(card)  # not at the defaults
    plan = plan_offload(BIG, [card], 4096, 8, may_shrink=True)
    assert plan.layers == -1
    assert plan.parallel < 8 and plan.ctx_size >= MIN_CTX
    assert whole(BIG, plan.ctx_size, plan.parallel) <= card.free - margin(card)
    assert "neither was set" in plan.reason
    kept = plan_offload(BIG, [card], 4096, 8, may_shrink=False)
    assert 0 < kept.layers < 32 and (kept.ctx_size, kept.parallel) == (4096, 8)


def test_several_devices_share_the_model_by_free_memory() -> None:
    a = DeviceMemory("CUDA0", 4 * GiB + 256 * MiB, 8 * GiB)
    b = DeviceMemory("CUDA1", 2 * GiB + 256 * MiB, 8 * GiB)
    alone = plan_offload(BIG, [a], 4096, 1, may_shrink=False)
    both = plan_offload(BIG, [a, b], 4096, 1, may_shrink=False)
    assert both.offloaded > alone.offloaded
    assert set(both.per_device) == {"CUDA0", "CUDA1"}
    assert both.per_device["CUDA0"] > both.per_device["CUDA1"] > 0
    assert sum(both.per_device.values()) <= both.gpu_bytes


def test_a_second_model_gets_what_the_first_left() -> None:
    """Free memory is read at each load, so the models loaded before have taken theirs."""
    card = DeviceMemory("CUDA0", 16 * GiB, 24 * GiB)
    first = plan_offload(BIG, [card], 4096, 8, may_shrink=False)
    after = DeviceMemory("CUDA0", card.free - first.gpu_bytes, card.total)
    second = plan_offload(BIG, [after], 4096, 8, may_shrink=False)
    assert first.layers == -1 and 0 < second.layers < 32


def test_a_model_that_fits_nowhere_stays_on_the_cpu() -> None:
    tiny = DeviceMemory("Metal", 300 * MiB, 512 * MiB)
    plan = plan_offload(BIG, [tiny], 4096, 8, may_shrink=True)
    assert plan.layers == 0 and plan.offloaded == 0 and plan.gpu_bytes == 0
    assert "not one layer" in plan.reason
    assert plan_offload(BIG, [], 4096, 8, may_shrink=True).layers == 0


def test_the_header_estimate_of_smollm2() -> None:
    """SmolLM2-135M: 30 blocks, 576-wide, 3 KV heads of 64: K+V of one token in one layer is
    2 x 192 x 2 bytes at f16 (23 KB a token over 30 layers, as the README says)."""
    s = model_shape(embedded_model_path())
    assert s.n_layers == 30 and s.n_embd == 576 and s.n_vocab == 49152
    assert s.kv_bytes_per_token_layer == 2 * 192 * 2
    assert s.n_ctx_train == 8192
    q8 = model_shape(embedded_model_path(), "q8_0", "q8_0")
    assert q8.kv_bytes_per_token_layer < s.kv_bytes_per_token_layer
    blocks = s.n_layers * s.layer_bytes
    assert 0.6 < blocks / embedded_model_path().stat().st_size < 0.8  # the embeddings are the rest


@pytest.mark.parametrize(
    ("given", "want"), [({}, "auto"), ({"n_gpu_layers": -1}, -1), ({"n_gpu_layers": 0}, 0)]
)
def test_auto_is_the_default(given: dict[str, object], want: object) -> None:
    assert Settings(**given).n_gpu_layers == want  # type: ignore[arg-type]


def test_auto_on_this_cpu_build_offloads_nothing() -> None:
    """The real CPU build: no offload device, so `auto` is 0 layers and flash attention stays
    as configured; the model serves as before."""
    import asyncio

    from daemon.app import engine_options
    from daemon.engine.loading.loaded import LoadedModel
    from daemon.engine.types import GenerationRequest, SamplingParams

    opts = engine_options(Settings(ctx_size=256, parallel=1))
    assert opts.model.n_gpu_layers is None and opts.fit_kv is False  # ctx and slots were set
    lm = LoadedModel("auto", embedded_model_path(), opts)
    try:
        assert lm.offload.layers == 0 and lm.offload.reason == "no GPU"
        assert lm.ctx_size == 256 and lm.generator().n_slots == 1

        async def one() -> int:
            h = lm.submit(GenerationRequest(lm.tokenize("1, 2,"), 3, SamplingParams(0.0)))
            return len([t async for c in h.chunks() for t in c.token_ids])

        assert asyncio.run(one()) == 3
    finally:
        lm.close()
    assert engine_options(Settings()).fit_kv is True
