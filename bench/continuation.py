"""Time to first token of a continued request_id vs a cold request with the same history.

A history of about `--history` tokens is generated under a request_id; continuing it must
not re-process the history. Rounds interleave (cold, warm, warm, cold, ...); medians reported.

    python bench/continuation.py --spawn --history 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import spawn_server

WORDS = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter", "window"]


def history_text(seed: int, words: int) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "\nSummary:"


def ttft(client: httpx.Client, body: dict) -> float:
    start = time.perf_counter()
    with client.stream("POST", "/api/generate", json=body) as r:
        r.raise_for_status()
        for chunk in r.iter_text():
            if chunk:
                return time.perf_counter() - start
    return time.perf_counter() - start


def evict(client: httpx.Client, slots: int) -> None:
    """Occupy every slot with something else, so the continuation must restore from the store."""
    body = {
        "prompts": [
            {"request_id": f"evict-{time.time()}-{i}", "prompt": f"Note {i}:"} for i in range(slots)
        ],
        "generation_config": {"do_sample": False, "max_new_tokens": 2},
    }
    client.post("/api/generate-batch", json=body).raise_for_status()


def measure(
    url: str, history: int, rounds: int, slots: int
) -> tuple[list[float], list[float], list[float]]:
    """TTFTs (cold, continued from the slot, continued from the store) over `rounds`."""
    greedy = {"do_sample": False, "max_new_tokens": 1}
    cold, warm, restored = [], [], []
    with httpx.Client(base_url=url, timeout=600) as c:
        for r in range(rounds):
            text = history_text(r, history)
            rid = f"hist-{r}-{time.time()}"
            # The first call processes the history (cold); its kept state is the history.
            cold.append(ttft(c, {"request_id": rid, "prompt": text, "generation_config": greedy}))
            warm.append(ttft(c, {"request_id": rid, "generation_config": greedy}))
            evict(c, slots)
            restored.append(ttft(c, {"request_id": rid, "generation_config": greedy}))
            print(
                f"round {r}: cold {cold[-1]:.3f}s, continued {warm[-1]:.3f}s, "
                f"restored {restored[-1]:.3f}s",
                file=sys.stderr,
            )
    return cold, warm, restored


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--spawn", action="store_true")
    p.add_argument("--history", type=int, default=2000, help="history length in words (~tokens)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--slots", type=int, default=8)
    args, server_args = p.parse_known_args()
    proc = None
    url = args.url
    if args.spawn:
        url, proc = spawn_server(["--ctx-size", str(args.history + 512), *server_args])
    try:
        cold, warm, restored = measure(url, args.history, args.rounds, args.slots)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    mc = statistics.median(cold)
    rows = [
        ("cold (new request_id, history as prompt)", cold),
        ("continued, slot still holds the sequence", warm),
        ("continued, restored from the store after eviction", restored),
    ]
    print(f"history ≈ {args.history} tokens, {args.rounds} rounds, medians (min–max)\n")
    print("| request | TTFT (s) | × cold |")
    print("| --- | --- | --- |")
    for name, xs in rows:
        m = statistics.median(xs)
        print(f"| {name} | {m:.3f} ({min(xs):.3f}–{max(xs):.3f}) | {m / mc:.3f} |")


if __name__ == "__main__":
    main()
