"""How far the fast default drifts from `--exact` (issue 26): logits and greedy tokens.

The reference is what `--exact` computes: flash attention off, the prompt prefilled in
chunks of the batch size, then one row per decode step — a plain llama.cpp decode loop.
The fast default differs in three ways, each measured on its own context with flash
attention on:

- `alone`: the same request by itself (flash attention's own rounding);
- `beside 7`: the request decoded in one batch with seven other streams (a busy server);
- `reused`: the prompt's first part restored from KV computed earlier in other chunks
  (a returning turn through the prompt cache), the rest prefilled, then decoding.

For each benchmark prompt (bench/client.py's chat prompts and bench/scaling.py's long
documents) the fast run is teacher-forced along the reference's greedy tokens, so every
step compares the same position: the largest absolute logit difference and whether the
greedy choice agrees. Free-running greedy output is compared as well: identical tokens, or
the first position where the two differ.

    python bench/drift.py                  # prints a Markdown table
    python bench/drift.py --write          # and puts it into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from client import story_messages
from results import write_section
from scaling import distinct_prompt

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import chat_template
from daemon.engine.native.llama import Batch, Context, ContextOptions, Model

BEGIN, END = "<!-- drift:begin -->", "<!-- drift:end -->"
N_SEQ = 8  # the reference uses sequence 0; `beside 7` fills the rest
CHUNK = 512  # the daemon's default batch size
TURN = 24  # `reused`: the new turn's tokens, prefilled after the restored part
REPLY = 16  # ... of which the last REPLY tokens were generated, one row per step


@dataclass
class Run:
    """One run along a prompt: each step's logits, and each step's greedy choice."""

    logits: list[np.ndarray]
    greedy: list[int]


def context(model: Model, flash: bool, n_ctx_seq: int, threads: int) -> Context:
    return Context(
        model,
        ContextOptions(
            n_ctx=n_ctx_seq * N_SEQ,
            n_batch=CHUNK,
            n_ubatch=CHUNK,
            n_seq_max=N_SEQ,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=flash,
        ),
    )


def prefill(ctx: Context, batch: Batch, seq: int, tokens: list[int], pos: int) -> np.ndarray:
    """Decode `tokens` of `seq` from `pos` in chunks; the last row's logits."""
    for i in range(0, len(tokens), CHUNK):
        chunk = tokens[i : i + CHUNK]
        batch.clear()
        for j, tok in enumerate(chunk):
            batch.add(tok, pos + i + j, seq, i + j == len(tokens) - 1)
        if ctx.decode(batch) != 0:
            raise RuntimeError("llama_decode failed")
    return ctx.logits_np(batch.n_tokens - 1).copy()


def decode_along(
    ctx: Context,
    batch: Batch,
    prompt: list[int],
    forced: list[int] | None,
    steps: int,
    *,
    neighbours: list[list[int]] | None = None,
    split: int | None = None,
) -> Run:
    """Prefill `prompt` into sequence 0 (beside neighbour streams, or as a returning turn
    whose first `split` tokens an earlier request left), then decode `steps` rows: along
    `forced` when given (teacher forcing), greedily otherwise."""
    for s in range(N_SEQ):
        ctx.seq_rm(s)
    if split is not None:
        # The earlier request: its prompt in chunks, its reply one row per step (the reused
        # KV of generated tokens); then the new turn's tokens as one chunk.
        reply = max(1, split - REPLY)
        prefill(ctx, batch, 0, prompt[:reply], 0)
        for j in range(reply, split):
            prefill(ctx, batch, 0, prompt[j : j + 1], j)
        logits = prefill(ctx, batch, 0, prompt[split:], split)
    else:
        logits = prefill(ctx, batch, 0, prompt, 0)
    others = neighbours or []
    npos = [len(p) for p in others]
    nlast = []
    for k, p in enumerate(others, start=1):
        nlast.append(int(np.argmax(prefill(ctx, batch, k, p, 0))))
    out: list[np.ndarray] = []
    greedy: list[int] = []
    pos = len(prompt)
    for step in range(steps):
        out.append(logits)
        tok = forced[step] if forced is not None else int(np.argmax(logits))
        greedy.append(int(np.argmax(logits)))
        batch.clear()
        batch.add(tok, pos, 0, True)
        for k, t in enumerate(nlast, start=1):
            batch.add(t, npos[k - 1], k, True)
        if ctx.decode(batch) != 0:
            raise RuntimeError("llama_decode failed")
        logits = ctx.logits_np(0).copy()
        for k in range(len(nlast)):
            nlast[k] = int(np.argmax(ctx.logits_np(k + 1)))
            npos[k] += 1
        pos += 1
    return Run(out, greedy)


def first_difference(a: list[int], b: list[int]) -> int | None:
    """The first index where two token lists differ (None: identical)."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=64, help="decode steps per prompt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = p.parse_args()

    model = Model(embedded_model_path())
    template = chat_template(model)
    prompts: list[tuple[str, list[int]]] = []
    for i in range(6):
        text = template.render(story_messages(i), add_generation_prompt=True)
        prompts.append((f"chat {i}", model.tokenize(text, add_special=False)))
    for seed, n in ((1, 300), (2, 700), (3, 1200)):
        text = distinct_prompt(model, seed, n)
        prompts.append((f"document {n}", model.tokenize(text, add_special=True)))
    room = max(len(t) for _, t in prompts) + args.steps + 8
    neighbours = [
        model.tokenize(template.render(story_messages(20 + k)), add_special=False)
        for k in range(N_SEQ - 1)
    ]
    batch = Batch(CHUNK, N_SEQ)
    exact = context(model, False, room, args.threads)
    fast = context(model, True, room, args.threads)
    names = ("alone", "beside 7", "reused")
    rows: dict[str, list[tuple[float, float, int | None]]] = {s: [] for s in names}
    for label, toks in prompts:
        ref = decode_along(exact, batch, toks, None, args.steps)
        for name in names:
            opts: dict[str, Any] = {
                "alone": {},
                "beside 7": {"neighbours": neighbours},
                "reused": {"split": max(REPLY + 1, len(toks) - TURN)},
            }[name]
            forced = decode_along(fast, batch, toks, ref.greedy, args.steps, **opts)
            free = decode_along(fast, batch, toks, None, args.steps, **opts)
            diff = max(
                float(np.max(np.abs(a - b))) for a, b in zip(ref.logits, forced.logits, strict=True)
            )
            agree = sum(x == y for x, y in zip(ref.greedy, forced.greedy, strict=True)) / args.steps
            rows[name].append((diff, agree, first_difference(ref.greedy, free.greedy)))
            print(
                f"{label:>14} {name:>9}: max |Δlogit| {diff:.4f}, step agreement {agree:.3f}, "
                f"free greedy first differs at {first_difference(ref.greedy, free.greedy)}",
                file=sys.stderr,
                flush=True,
            )
    exact.close()
    fast.close()
    batch.close()

    table = [
        "| fast default vs --exact | largest \\|Δlogit\\| (median over prompts) | largest "
        "\\|Δlogit\\| (max) | greedy steps agreeing (teacher-forced) | prompts whose "
        f"{args.steps} free greedy tokens are identical | first differing token where not |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, vals in rows.items():
        diffs = [d for d, _, _ in vals]
        agree = statistics.mean(a for _, a, _ in vals)
        firsts = [f for _, _, f in vals if f is not None]
        table.append(
            f"| {name} | {statistics.median(diffs):.4f} | {max(diffs):.4f} | {agree:.3f} | "
            f"{len(vals) - len(firsts)}/{len(vals)} | "
            f"{', '.join(map(str, sorted(firsts))) or '—'} |"
        )
    head = (
        f"`python bench/drift.py` — {datetime.date.today().isoformat()}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"{embedded_model_path().name}; {len(prompts)} prompts (6 chat prompts of "
        "bench/client.py, documents of 300, 700 and 1,200 tokens), "
        f"{args.steps} greedy steps each. The reference is a plain decode loop under "
        "`--exact` (flash attention off, one row per step); logits are raw, before softmax."
    )
    text = "\n".join([head, "", *table])
    print(text)
    if args.write:
        write_section(text, BEGIN, END, "## Drift of the fast default from --exact (issue 26)")


if __name__ == "__main__":
    main()
