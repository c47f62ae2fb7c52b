"""n-gram speculation on and off, engine level, after a ~1,200-token prompt and after a
short one (issue 26: the cost model per context length class).

One model per setting (fast default: flash attention on, exact off), three seeds, greedy
128 tokens after each prompt; tokens/s from the first token to the last. Prints the figures
and the speculator's counters.

    python bench/spec_context.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from scaling import distinct_prompt

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.options import EngineOptions
from daemon.engine.types import GenerationRequest, SamplingParams


def tokens_per_second(lm: LoadedModel, prompt: list[int], n: int = 128) -> float:
    async def main() -> float:
        h = lm.submit(GenerationRequest(prompt, n, SamplingParams(temperature=0.0)))
        t0 = None
        k = 0
        async for c in h.chunks():
            if t0 is None:
                t0 = time.perf_counter()
                continue
            k += len(c.token_ids)
        assert t0 is not None
        return k / (time.perf_counter() - t0)

    return asyncio.run(main())


def main() -> None:
    path = embedded_model_path()
    res: dict[tuple[bool, str], list[float]] = {}
    for spec in (True, False):
        opts = EngineOptions(
            ctx_size=4096, parallel=2, threads=2, exact=False, flash_attn=True, speculate=spec
        )
        lm = LoadedModel("m", path, opts)
        for seed in range(3):
            long = lm.tokenize(distinct_prompt(lm.model, seed, 1200))
            count = ", ".join(str(i % 10 + 1) for i in range(23))
            short = lm.tokenize(f"Count: {count} {seed}")
            res.setdefault((spec, "long"), []).append(tokens_per_second(lm, long))
            res.setdefault((spec, "short"), []).append(tokens_per_second(lm, short))
        if spec:
            s = lm.generator().spec
            print("drafted", dict(s.drafted), "accepted", dict(s.accepted))
        lm.close()
    for (spec, kind), v in res.items():
        print("speculate" if spec else "plain", kind, [round(x, 1) for x in v])


if __name__ == "__main__":
    main()
