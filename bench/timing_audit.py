"""Prompt-cache timing audit: can one API key tell, by time to first token, which prompts
another key sent? (issue 25; the method of published prompt-cache audits.)

One daemon with two keys, A (the victim) and B (the attacker), at the default
`--cache-share-tokens 0`. For each of `--pairs` rounds: A sends a random prompt P (so P is
in a slot and the prompt cache, for A); then, in a random order, B sends P (a right guess),
B sends a fresh prompt Q of the same length (a wrong guess), and A sends P again (its own
repeat). Each is a streamed /v1/completions with max_tokens 1; the time to the first token is
measured at the client.

Expected: B's right and wrong guesses are indistinguishable (two-sided Mann-Whitney U and a
paired Wilcoxon signed-rank test, p > 0.05), while A's own repeat is measurably faster than
B's fresh prompt (one-sided, p < 0.05): the cache works, for its owner only. Its section of
bench/RESULTS.md is rewritten.

    python bench/timing_audit.py --pairs 120 --prompt-tokens 400
"""

from __future__ import annotations

import argparse
import datetime
import random
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import stream_sync
from load import spawn_server
from perf import machine, span
from prompt_cache import words
from results import write_section

from daemon.config import embedded_model_path
from daemon.engine.native.llama import Model

BEGIN, END = "<!-- timing-audit:begin -->", "<!-- timing-audit:end -->"
A, B = "audit-victim", "audit-attacker"


def ttft(url: str, key: str, text: str) -> float:
    body = {"prompt": text, "max_tokens": 1, "temperature": 0, "stream": True}
    return stream_sync(url, body, "/v1/completions", key=key).ttft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=120)
    ap.add_argument("--prompt-tokens", type=int, default=400)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()

    model = Model(embedded_model_path())
    rng = random.Random(args.seed)
    url, proc = spawn_server(
        [
            *("--threads", str(args.threads), "--parallel", "4", "--ctx-size", "1024"),
            "--api-key-file",
            str(_key_file()),
        ]
    )
    same, fresh, own = [], [], []
    try:
        for text in (words(rng, args.prompt_tokens, model) for _ in range(3)):  # warm-up
            ttft(url, A, text)
            ttft(url, B, text)
        for i in range(args.pairs):
            p = words(rng, args.prompt_tokens, model)
            q = words(rng, args.prompt_tokens, model)
            ttft(url, A, p)
            jobs = [("same", B, p), ("fresh", B, q), ("own", A, p)]
            rng.shuffle(jobs)
            for kind, key, text in jobs:
                {"same": same, "fresh": fresh, "own": own}[kind].append(ttft(url, key, text))
            if (i + 1) % 20 == 0:
                print(f"{i + 1}/{args.pairs} pairs", file=sys.stderr)
    finally:
        proc.terminate()
        proc.wait(30)

    guess_u = stats.mannwhitneyu(same, fresh, alternative="two-sided").pvalue
    guess_w = stats.wilcoxon(same, fresh, alternative="two-sided").pvalue
    own_u = stats.mannwhitneyu(own, fresh, alternative="less").pvalue
    ms = [1000 * x for x in same], [1000 * x for x in fresh], [1000 * x for x in own]
    ratio = statistics.median(ms[2]) / statistics.median(ms[1])
    verdict = "indistinguishable" if min(guess_u, guess_w) > 0.05 else "DISTINGUISHABLE"
    body = "\n".join(
        [
            f"{datetime.date.today()}, {machine()}; `--threads {args.threads} --parallel 4`,",
            f"default `--cache-share-tokens 0`; {args.pairs} pairs of ~{args.prompt_tokens}-token",
            "prompts, order shuffled within each pair; time to first token at the client, ms,",
            "median (min–max).",
            "",
            "| request | TTFT ms | test against B's fresh prompt |",
            "| --- | --- | --- |",
            f"| B sends A's prompt (right guess) | {span(ms[0], 1)} | Mann-Whitney p = "
            f"{guess_u:.3f}, paired Wilcoxon p = {guess_w:.3f} (two-sided): {verdict} |",
            f"| B sends a fresh prompt (wrong guess) | {span(ms[1], 1)} | – |",
            f"| A repeats its own prompt | {span(ms[2], 1)} | Mann-Whitney p = {own_u:.2g} "
            f"(A faster, one-sided); median {ratio:.2f}x |",
        ]
    )
    print(body)
    if not args.no_write:
        write_section(
            body, BEGIN, END, "## Prompt-cache timing audit (no key reads another's prompt)"
        )


def _key_file() -> Path:
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="edged-audit-")) / "keys"
    path.write_text(f"{A}\n{B}\n")
    return path


if __name__ == "__main__":
    main()
