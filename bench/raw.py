"""Raw llama.cpp baseline: a bare batched decode loop through the same bindings, no server.

Feeds the same chat prompts the HTTP benchmarks send (rendered with the model's template),
prefills them in batches of up to `n_batch` tokens, then decodes greedily, one llama_decode
per step over every sequence, until each has `--steps` tokens. This is the ceiling a server
built on these bindings can reach.

    python bench/raw.py --seqs 1 8 --steps 128 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import story_messages

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import chat_template, prompt_tokens
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model
from daemon.engine.native.sampler import SamplerChain
from daemon.engine.types import SamplingParams


@dataclass
class RawRun:
    """Timings of one raw run."""

    seqs: int
    steps: int
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens over prefill + decode: the work one HTTP round does."""
        return self.seqs * self.steps / (self.prefill_s + self.decode_s)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens from the decode steps alone (the first token comes from the prefill)."""
        return self.seqs * (self.steps - 1) / self.decode_s if self.steps > 1 else 0.0


def story_prompts(model: Model, n: int, offset: int = 0) -> list[list[int]]:
    """Token ids of the benchmark's chat prompts, exactly as the server builds them."""
    template = chat_template(model)
    return [
        prompt_tokens(
            model, template.render(story_messages(offset + i), add_generation_prompt=True)
        )
        for i in range(n)
    ]


def run(
    model: Model, prompts: list[list[int]], steps: int, threads: int, n_batch: int = 512
) -> RawRun:
    """Prefill `prompts`, then decode greedily until each sequence has `steps` tokens."""
    seqs = len(prompts)
    ctx = Context(
        model,
        ContextOptions(
            n_ctx=(max(map(len, prompts)) + steps + 8) * seqs,
            n_batch=n_batch,
            n_ubatch=n_batch,
            n_seq_max=seqs,
            n_threads=threads,
            n_threads_batch=threads,
        ),
    )
    batch = Batch(n_batch, 1)
    samplers = [SamplerChain(model, SamplingParams(temperature=0.0), 0) for _ in range(seqs)]
    try:
        t0 = time.perf_counter()
        feed = [(s, i, t) for s, p in enumerate(prompts) for i, t in enumerate(p)]
        rows = [0] * seqs
        for lo in range(0, len(feed), n_batch):
            batch.clear()
            for s, i, t in feed[lo : lo + n_batch]:
                row = batch.add(t, i, s, i == len(prompts[s]) - 1)
                if i == len(prompts[s]) - 1:
                    rows[s] = row
            if ctx.decode(batch) != 0:
                raise RuntimeError("llama_decode failed")
        nxt = [samplers[s].sample(ctx, rows[s]) for s in range(seqs)]
        t1 = time.perf_counter()
        for step in range(1, steps):
            batch.clear()
            for s in range(seqs):
                batch.add(nxt[s], len(prompts[s]) + step - 1, s, True)
            if ctx.decode(batch) != 0:
                raise RuntimeError("llama_decode failed")
            nxt = [samplers[s].sample(ctx, s) for s in range(seqs)]
        return RawRun(seqs, steps, t1 - t0, time.perf_counter() - t1)
    finally:
        for smp in samplers:
            smp.close()
        batch.close()
        ctx.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seqs", type=int, nargs="+", default=[1, 8])
    p.add_argument("--steps", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    model = Model(embedded_model_path())
    runs: dict[int, list[RawRun]] = {s: [] for s in args.seqs}
    for r in range(args.rounds):
        for s in args.seqs if r % 2 == 0 else reversed(args.seqs):
            runs[s].append(run(model, story_prompts(model, s, r * 8), args.steps, args.threads))
    print("| sequences | tokens/s incl. prefill | decode tokens/s | prefill (s) |")
    print("| --- | --- | --- | --- |")
    for s, rs in runs.items():
        cols = [
            [x.tokens_per_s for x in rs],
            [x.decode_tokens_per_s for x in rs],
            [x.prefill_s for x in rs],
        ]
        print(f"| {s} | " + " | ".join(f"{statistics.median(c):.2f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
