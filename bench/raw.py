"""Raw llama.cpp baseline: a bare batched decode loop through the same bindings, no server.

Prefills `--prompt` tokens per sequence, then decodes `--steps` greedy tokens for each of
`--seqs` sequences, one llama_decode per step, one greedy sampler per sequence. This is the
ceiling a server built on these bindings can reach.

    python bench/raw.py --seqs 1 8 --steps 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from daemon.config import embedded_model_path
from daemon.engine.llama import Batch, Context, ContextOptions, Model, SamplerChain
from daemon.engine.types import SamplingParams


def run(model: Model, seqs: int, prompt: int, steps: int, threads: int) -> tuple[float, float]:
    """Returns (decode tokens/s over all sequences, prefill seconds)."""
    ctx = Context(
        model,
        ContextOptions(
            n_ctx=(prompt + steps + 8) * seqs,
            n_batch=max(512, prompt * seqs),
            n_ubatch=max(512, prompt * seqs),
            n_seq_max=seqs,
            n_threads=threads,
            n_threads_batch=threads,
        ),
    )
    batch = Batch(max(512, prompt * seqs), 1)
    samplers = [SamplerChain(model, SamplingParams(temperature=0.0), 0) for _ in range(seqs)]
    base = model.tokenize("Write a long story about a lighthouse keeper. " * 20, add_special=False)
    try:
        t0 = time.perf_counter()
        batch.clear()
        rows = []
        for s in range(seqs):
            toks = [base[(s + i) % len(base)] for i in range(prompt)]
            for i, t in enumerate(toks):
                r = batch.add(t, i, s, i == prompt - 1)
            rows.append(r)
        assert ctx.decode(batch) == 0
        prefill = time.perf_counter() - t0
        nxt = [samplers[s].sample(ctx, rows[s]) for s in range(seqs)]
        t1 = time.perf_counter()
        for step in range(steps):
            batch.clear()
            for s in range(seqs):
                batch.add(nxt[s], prompt + step, s, True)
            assert ctx.decode(batch) == 0
            nxt = [samplers[s].sample(ctx, s) for s in range(seqs)]
        return seqs * steps / (time.perf_counter() - t1), prefill
    finally:
        for smp in samplers:
            smp.close()
        batch.close()
        ctx.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[1, 8])
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    model = Model(embedded_model_path())
    results: dict[int, list[float]] = {s: [] for s in args.seqs}
    for r in range(args.rounds):
        order = args.seqs if r % 2 == 0 else list(reversed(args.seqs))
        for s in order:
            tps, _ = run(model, s, args.prompt, args.steps, args.threads)
            results[s].append(tps)
    print("| sequences | raw decode tokens/s, median (min–max) |")
    print("| --- | --- |")
    for s, xs in results.items():
        print(f"| {s} | {statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f}) |")


if __name__ == "__main__":
    main()
