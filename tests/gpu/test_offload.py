"""On a GPU build only (bench/gpu.sh runs these; elsewhere they skip): `--n-gpu-layers auto`
offloads every layer of the default model, and its output matches the CPU's within the drift
measured here (printed, for the results section)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.native.ggml_rpc import local_offload_devices
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model, ModelOptions
from daemon.engine.types import GenerationRequest, SamplingParams

pytestmark = pytest.mark.skipif(
    not local_offload_devices(), reason="no GPU device in this llama-cpp-python build"
)
PROMPTS = [
    "Q: The capital of France is?\nA:",
    "def fibonacci(n):",
    "1, 2, 3, 4, 5,",
    "The quick brown fox",
]
AUTO = EngineOptions(ctx_size=1024, parallel=2, model=ModelOptions(n_gpu_layers=None))


def test_auto_offloads_every_layer_of_the_default_model() -> None:
    lm = LoadedModel("gpu", embedded_model_path(), AUTO)
    try:
        assert lm.offload.layers == -1 and lm.offload.offloaded == lm.offload.n_layers == 30
        assert lm.offload.gpu_bytes > 0
        print(f"offload: {lm.offload}")
    finally:
        lm.close()


def _first_logits(n_gpu_layers: int, flash: bool) -> list[np.ndarray]:
    model = Model(embedded_model_path(), ModelOptions(n_gpu_layers=n_gpu_layers))
    ctx = Context(
        model,
        ContextOptions(
            n_ctx=512,
            n_batch=512,
            n_ubatch=512,
            n_seq_max=1,
            n_threads=2,
            n_threads_batch=2,
            flash_attn=flash,
        ),
    )
    batch = Batch(512, 1)
    out = []
    for text in PROMPTS:
        toks = model.tokenize(text, add_special=True)
        ctx.seq_rm(0)
        batch.clear()
        for i, t in enumerate(toks):
            batch.add(t, i, 0, i == len(toks) - 1)
        assert ctx.decode(batch) == 0
        out.append(np.array(ctx.logits_np(len(toks) - 1), copy=True))
    ctx.close()
    model.close()
    return out


def test_gpu_logits_match_the_cpu_within_the_drift() -> None:
    cpu = _first_logits(0, flash=False)
    gpu = _first_logits(-1, flash=True)
    drift = max(float(np.max(np.abs(c - g))) for c, g in zip(cpu, gpu, strict=True))
    top1 = sum(int(np.argmax(c) == np.argmax(g)) for c, g in zip(cpu, gpu, strict=True))
    print(f"GPU vs CPU: max |logit difference| {drift:.4f}; top-1 agreement {top1}/{len(cpu)}")
    assert drift < 1.0 and top1 == len(cpu)


def test_greedy_text_agreement() -> None:
    """Greedy 32 tokens of each prompt on the GPU (auto) and the CPU: the agreement is
    reported; the first token must agree (later ones may part at near-ties)."""

    def run(options: EngineOptions) -> list[list[int]]:
        lm = LoadedModel("x", embedded_model_path(), options)

        async def one(text: str) -> list[int]:
            req = GenerationRequest(lm.tokenize(text), 32, SamplingParams(temperature=0.0))
            return [t async for c in lm.submit(req).chunks() for t in c.token_ids]

        async def all_() -> list[list[int]]:
            return [await one(p) for p in PROMPTS]

        try:
            return asyncio.run(all_())
        finally:
            lm.close()

    gpu = run(AUTO)
    cpu = run(replace(AUTO, model=ModelOptions(n_gpu_layers=0)))
    same = [
        next((i for i, (a, b) in enumerate(zip(g, c, strict=False)) if a != b), len(g))
        for g, c in zip(gpu, cpu, strict=True)
    ]
    print(f"greedy tokens equal before the first difference, per prompt: {same} of 32")
    assert all(n >= 1 for n in same)
