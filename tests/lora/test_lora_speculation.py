"""LoRA meets speculative decoding: drafts are verified under a request's adapters only where
rows under those adapters are exact (each adapter is probed at load), so greedy output with
speculation equals plain decoding under every adapter set."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from daemon.engine.adapters.lora import AdapterSpec
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import GenerationRequest, SamplingParams

GREEDY = SamplingParams(temperature=0.0)
# Flash attention over at most 256 cells per sequence: rows without adapters are exact here.
OPTS = EngineOptions(ctx_size=256, parallel=4, max_queue=64, flash_attn=True)
PROMPTS = [
    "Repeat exactly: the cat sat on the mat and the dog sat on the log. "
    "Repeat exactly: the cat sat on the mat and the dog",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11,",
]
SETS = [(), (("a", 1.0),), (("b", 0.5),), (("a", 1.0), ("b", 0.5))]


def greedy(lm: LoadedModel, lora: tuple[tuple[str, float], ...]) -> list[list[object]]:
    """Each prompt's tokens with their log-probabilities: bit-exact rows give equal floats,
    where greedy text alone would only show a difference at a near-tie."""

    async def one(prompt: str) -> list[object]:
        req = GenerationRequest(lm.tokenize(prompt), 24, GREEDY, lora=lora, logprobs=1)
        return [(lp.token, lp.logprob) async for c in lm.submit(req).chunks() for lp in c.logprobs]

    async def main() -> list[list[object]]:
        return list(await asyncio.gather(*(one(p) for p in PROMPTS)))

    return asyncio.run(main())


def test_speculation_follows_each_adapters_probe(
    model_path: Path, smollm_adapters: dict[str, Path]
) -> None:
    specs = (
        AdapterSpec("a", smollm_adapters["a"], 1.0, None),
        AdapterSpec("b", smollm_adapters["b"], 0.5, None),
    )
    on_opts = replace(OPTS, speculate=True, speculate_always=True)
    off = LoadedModel("off", model_path, OPTS, adapters=specs)
    on = LoadedModel("on", model_path, on_opts, adapters=specs)
    try:
        spec = on.generator().spec
        assert spec.usable  # without adapters rows are exact: speculation is on
        for lora in SETS:
            before = spec.disabled["inexact"], sum(spec.drafted.values())
            assert greedy(on, lora) == greedy(off, lora), lora
            inexact = any(name not in spec.exact_adapters for name, _ in lora)
            after = spec.disabled["inexact"], sum(spec.drafted.values())
            if inexact:  # every request under this set decoded plainly
                assert after[0] - before[0] == len(PROMPTS) and after[1] == before[1], lora
            else:  # and under an exact set (or none) the drafts were verified
                assert after[0] == before[0] and after[1] > before[1], lora
    finally:
        on.close()
        off.close()
