"""How cost grows with work (issue 13 part 3): context length x slots, one command.

For each context size (`--ctx-size`, raised) one edged server runs with the most slots
asked for. Per context C:

- prefill tokens/s: a distinct prompt of about C - 64 tokens under a new request_id,
  `max_new_tokens: 1` (its time to first token is the prefill);
- restore time: every slot is then given to other requests, and the request_id is
  continued: its KV state comes back from the request_id store (time to first token of
  the continuation, which includes restoring the state and decoding one token);
- decode tokens/s at S = 1, 4, 8, 16 streams at depth C: one `/v1/completions` request
  with `n: S` on that prompt (the slot's prefix cache holds it, the n choices get copies
  of its KV), greedy, end-of-generation tokens banned; the aggregate rate is taken from
  the moment every choice has its first token to the first choice's end;
- memory per slot: the KV cells one slot allocates (llama.cpp's own sizes), and the
  server's resident memory with every slot allocated.

Fewer rounds run at the big sizes. Writes the table into bench/RESULTS.md and a plot
(bench/scaling.png) beside it:

    python bench/scaling.py                      # ~15 minutes on a quiet 2-core machine
    python bench/scaling.py --contexts 512 2048 --rounds 1 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from continuation import evict, history_text, ttft
from load import spawn_server
from perf import rss_of
from results import write_section

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import prompt_tokens
from daemon.engine.native.llama import Model

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- scaling:begin -->", "<!-- scaling:end -->"


@dataclass
class Point:
    """Everything measured at one context size."""

    ctx: int
    prompt_tokens: int
    kv_bytes_per_slot: int
    rss_bytes: int = 0
    prefill_tps: list[float] = field(default_factory=list)
    restore_s: list[float] = field(default_factory=list)
    decode_tps: dict[int, list[float]] = field(default_factory=dict)


def distinct_prompt(model: Model, seed: int, tokens: int) -> str:
    """Text of about `tokens` tokens that shares no prefix with other seeds' text."""
    words = tokens
    while True:
        text = f"Document {seed}:\n" + history_text(seed, words)
        n = len(prompt_tokens(model, text))
        if abs(n - tokens) <= 5:
            return text
        words = max(1, round(words * tokens / n))


def load_point(data: dict) -> Point:
    """A Point as saved in scaling.json (JSON turns the stream counts into strings)."""
    decode = {int(k): v for k, v in data.pop("decode_tps").items()}
    return Point(**data, decode_tps=decode)


def n_stream(url: str, prompt: str, n: int, max_tokens: int, ban: list[int]) -> float:
    """Aggregate decode tokens/s of `n` greedy choices of one prompt, all decoding."""
    body = {
        "prompt": prompt,
        "n": n,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "stream": True,
        "logit_bias": {str(t): -100 for t in ban},
    }
    times: dict[int, list[float]] = {}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=1800) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            now = time.perf_counter()
            for c in json.loads(line[6:]).get("choices", []):
                if c.get("text"):
                    times.setdefault(c["index"], []).append(now)
    lo = max(t[0] for t in times.values())
    hi = min(t[-1] for t in times.values())
    count = sum(1 for t in times.values() for x in t if lo < x <= hi)
    return count / (hi - lo) if hi > lo else 0.0


def measure(args: argparse.Namespace, model: Model, ctx: int, ban: list[int]) -> Point:
    slots = max(args.slots)
    kv = model.kv_bytes(ctx)
    # The request_id store must hold one full-context state: at 8k its KV (~180 MiB) is
    # more than the default per-key share (1/4 of 512 MiB), and a state over the quota is
    # not kept, so the continuation would answer 400 (unknown request_id).
    store = str(max(512 << 20, 4 * kv))
    url, proc = spawn_server(
        [
            *("--threads", str(args.threads), "--parallel", str(slots), "--ctx-size", str(ctx)),
            *("--store-max-bytes", store, "--store-key-max-bytes", store),
        ]
    )
    length = ctx - 64
    point = Point(ctx, length, kv)
    rounds = args.rounds if ctx <= 2048 else 1
    greedy = {"do_sample": False, "max_new_tokens": 1}
    try:
        point.rss_bytes = rss_of(proc.pid)
        with httpx.Client(base_url=url, timeout=1800) as c:
            for r in range(rounds):
                text = distinct_prompt(model, 1000 * ctx + r, length)
                rid = f"scaling-{ctx}-{r}-{time.time()}"
                cold = ttft(c, {"request_id": rid, "prompt": text, "generation_config": greedy})
                point.prefill_tps.append(length / cold)
                evict(c, slots)
                point.restore_s.append(ttft(c, {"request_id": rid, "generation_config": greedy}))
                log(
                    f"ctx {ctx} r{r}: prefill {length / cold:.1f} tok/s, "
                    f"restore {point.restore_s[-1]:.3f}s"
                )
                max_tokens = 32 if ctx <= 2048 else 16
                for s in args.slots if r % 2 == 0 else reversed(args.slots):
                    tps = n_stream(url, text, s, max_tokens, ban)
                    point.decode_tps.setdefault(s, []).append(tps)
                    log(f"ctx {ctx} r{r}: {s} streams {tps:.1f} tok/s")
    finally:
        proc.terminate()
        proc.wait(30)
    return point


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def med(xs: list[float], fmt: str = ".1f") -> str:
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(statistics.median(xs), fmt)} ({format(min(xs), fmt)}–{format(max(xs), fmt)})"


def table(points: list[Point], args: argparse.Namespace) -> str:
    slots = sorted({s for p in points for s in p.decode_tps})
    head = (
        "| context | prompt tokens | prefill tok/s | restore prefix (s) | "
        + " | ".join(f"decode tok/s, {s} stream{'s' if s > 1 else ''}" for s in slots)
        + " | KV per slot (MiB) | RSS, all slots (MiB) |"
    )
    rows = [head, "| " + " | ".join(["---"] * (6 + len(slots))) + " |"]
    for p in points:
        rows.append(
            f"| {p.ctx} | {p.prompt_tokens} | {med(p.prefill_tps)} | {med(p.restore_s, '.3f')} | "
            + " | ".join(med(p.decode_tps.get(s, [])) for s in slots)
            + f" | {p.kv_bytes_per_slot / 2**20:.0f} | {p.rss_bytes / 2**20:.0f} |"
        )
    load = os.getloadavg()
    info = (
        f"`python bench/scaling.py` — {datetime.date.today().isoformat()}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load[0]:.1f} at the end (run alone; any other work inflates every time); "
        f"{args.threads} threads; {max(args.slots)} slots per server; rounds: {args.rounds} "
        "up to 2k context, 1 at 8k; medians (min–max)."
    )
    return "\n".join([info, "", *rows, "", "![cost against work](scaling.png)"])


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(13, 4))
    ctxs = [p.ctx for p in points]
    a.plot(ctxs, [statistics.median(p.prefill_tps) for p in points], "o-")
    a.set(xscale="log", xlabel="context (tokens)", ylabel="prefill tokens/s", title="prefill")
    for s in sorted({s for p in points for s in p.decode_tps}):
        xs = [p.ctx for p in points if s in p.decode_tps]
        ys = [statistics.median(p.decode_tps[s]) for p in points if s in p.decode_tps]
        b.plot(xs, ys, "o-", label=f"{s} streams")
    b.set(
        xscale="log",
        xlabel="context depth (tokens)",
        ylabel="decode tokens/s",
        title="decode, aggregate",
    )
    b.legend()
    for ax in (a, b):  # the measured contexts as ticks, not log-scale clutter
        ax.set_xticks(ctxs, [str(x) for x in ctxs])
        ax.minorticks_off()
    c.plot(
        [p.prompt_tokens for p in points],
        [statistics.median(p.restore_s) for p in points],
        "o-",
        label="restore + 1 token",
    )
    for ax in (a, b):  # the measured contexts as ticks, not log-scale clutter
        ax.set_xticks(ctxs, [str(x) for x in ctxs])
        ax.minorticks_off()
    c.plot(
        [p.prompt_tokens for p in points],
        [p.kv_bytes_per_slot / 2**20 / 1000 for p in points],
        "s--",
        label="KV per slot (GiB)",
    )
    c.set(xlabel="prefix length (tokens)", ylabel="seconds / GiB", title="restore, memory")
    c.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--contexts", type=int, nargs="+", default=[512, 2048, 8192])
    p.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    p.add_argument(
        "--from-json", type=Path, help="rebuild table and plot from a saved scaling.json"
    )
    args = p.parse_args()
    saved = HERE / "scaling.json"
    if args.from_json:
        points = [load_point(x) for x in json.loads(args.from_json.read_text())]
    else:
        model = Model(embedded_model_path())
        ban = sorted(model.eog_tokens)
        points = []
        for ctx in args.contexts:
            points.append(measure(args, model, ctx, ban))
            # Saved after each size: a long run cut short still leaves its figures.
            saved.write_text(json.dumps([asdict(p) for p in points], indent=1))
    text = table(points, args)
    print(text)
    if args.no_write:
        return
    plot(points, HERE / "scaling.png")
    write_section(text, BEGIN, END, "## Cost against work (issue 13)")


if __name__ == "__main__":
    main()
