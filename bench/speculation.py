"""Speculative decoding on vs off, through the engine (no HTTP), interleaved medians.

Arms share one process: each is a LoadedModel with its own context; every round runs each
workload once per arm, in turn, so a noisy neighbour slows all arms alike. Tokens per second
are completion tokens over the wall time of the workload (prefill included).

    python bench/speculation.py --rounds 5
    python bench/speculation.py --target smollm-f16.gguf --draft SmolLM2-...Q4_1.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import GenerationRequest, SamplingParams

CODE = """def parse_header(line):
    key, _, value = line.partition(":")
    return key.strip().lower(), value.strip()


def parse_headers(lines):
    headers = {}
    for line in lines:
        key, value = parse_header(line)
        headers[key] = value
    return headers
"""
WORKLOADS = {
    # Quoting the prompt back (code editing, citing): what n-gram lookup is for.
    "quote": [f"Here is some code:\n\n{CODE}\nRepeat the code exactly.\n\n{CODE[:60]}"],
    # Free text: drafts from lookup are few and mostly wrong.
    "story": ["Write a short story about a lighthouse keeper who finds a message in a bottle."],
    # Four streams at once, two of each kind.
    "batch4": [
        f"Here is some code:\n\n{CODE}\nRepeat the code exactly.\n\n{CODE[:60]}",
        "Write a short story about a lighthouse keeper.",
        f"Copy this:\n{CODE}\n\n{CODE[:40]}",
        "Explain how rain forms, step by step.",
    ],
}


def chat(lm: LoadedModel, text: str) -> list[int]:
    return lm.tokenize(lm.render_chat([{"role": "user", "content": text}]))


async def one(lm: LoadedModel, prompts: list[str], n: int) -> int:
    async def gen(p: str) -> int:
        h = lm.submit(GenerationRequest(chat(lm, p), n, SamplingParams(temperature=0.0)))
        async for _ in h.chunks():
            pass
        return h.usage.completion_tokens

    return sum(await asyncio.gather(*(gen(p) for p in prompts)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", type=Path, default=embedded_model_path())
    ap.add_argument("--draft", type=Path, default=None, help="adds draft-model arms")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--workloads", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--inexact", action="store_true", help="speculate on inexact kernels too")
    args = ap.parse_args()
    base = EngineOptions(ctx_size=1024, parallel=4, flash_attn=True)
    spec = replace(base, speculate=True, exact=not args.inexact)
    arms = {
        "off": base,
        "ngram": spec,
        "ngram-always": replace(spec, speculate_always=True),
    }
    if args.draft is not None:
        d = replace(spec, speculate=False, draft_model=args.draft)
        arms |= {"draft": d, "draft-always": replace(d, speculate_always=True)}
    models = {name: LoadedModel(name, args.target, o) for name, o in arms.items()}
    for lm in models.values():
        asyncio.run(one(lm, ["Hello"], 4))  # warm up: page in the weights
    rates: dict[tuple[str, str], list[float]] = {}
    drafts: dict[tuple[str, str], list[int]] = {}
    for r in range(args.rounds):
        for w in args.workloads:
            for name, lm in models.items():
                s = lm.generator().spec
                d0, a0 = sum(s.drafted.values()), sum(s.accepted.values())
                t0 = time.perf_counter()
                n = asyncio.run(one(lm, WORKLOADS[w], args.tokens))
                rates.setdefault((w, name), []).append(n / (time.perf_counter() - t0))
                c = drafts.setdefault((w, name), [0, 0])
                c[0] += sum(s.drafted.values()) - d0
                c[1] += sum(s.accepted.values()) - a0
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"target {args.target.name}, draft {args.draft.name if args.draft else '-'}")
    print("| workload | arm | tok/s (median) | × off | drafted | accepted |")
    print("|---|---|---|---|---|---|")
    for w in args.workloads:
        ref = statistics.median(rates[(w, "off")])
        for name in models:
            med = statistics.median(rates[(w, name)])
            d, a = drafts[(w, name)]
            print(f"| {w} | {name} | {med:.1f} | {med / ref:.2f} | {d} | {a} |")
    for name, lm in models.items():
        s = lm.generator().spec
        if s.options.enabled:
            print(f"{name}: usable={s.usable} disabled={dict(s.disabled)} fit(a,b)={s.cost.fit()}")
        lm.close()


if __name__ == "__main__":
    main()
