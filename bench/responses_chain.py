"""A 10-turn Responses conversation: previous_response_id chained vs the history resent.

Every turn adds a paragraph of user text, so the history grows past 2,000 tokens. The chained
run names the previous response and sends only the new input; the stateless run (what every
peer's stateless mode costs) resends the whole conversation with `store: false`. Both see the
same conversation (the stateless run reuses the chained run's answers). Reported: time to first
token of the last turn, median over rounds, with the slots either still holding the
conversation ("warm") or taken by other traffic first ("evicted", a busy server's case).

    python bench/responses_chain.py --spawn --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import spawn_server

WORDS = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter", "window"]


def paragraph(rng: random.Random, words: int) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return f"Here are my notes: {body}. Which word came up most often?"


def stream_turn(client: httpx.Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Time to the first output delta, and the final response object."""
    start = time.perf_counter()
    first: float | None = None
    final: dict[str, Any] = {}
    with client.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            event = json.loads(line[5:])
            if first is None and event["type"] in (
                "response.output_text.delta",
                "response.function_call_arguments.delta",
            ):
                first = time.perf_counter() - start
            if event["type"] in ("response.completed", "response.incomplete"):
                final = event["response"]
    return (first if first is not None else time.perf_counter() - start), final


def evict(client: httpx.Client, slots: int) -> None:
    """Occupy every slot with other requests, so no slot still holds the conversation."""
    body = {
        "prompts": [
            {"request_id": f"evict-{time.time()}-{i}", "prompt": f"Note {i}:"} for i in range(slots)
        ],
        "generation_config": {"do_sample": False, "max_new_tokens": 2},
    }
    client.post("/api/generate-batch", json=body).raise_for_status()


def conversation(client: httpx.Client, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    common = {"model": args.model, "max_output_tokens": args.output, "temperature": 0}
    inputs = [paragraph(rng, args.words) for _ in range(args.turns)]
    history: list[dict[str, Any]] = []
    prev: str | None = None
    out: dict[str, Any] = {}
    for k, text in enumerate(inputs):
        last = k == args.turns - 1
        if last and args.evict:
            evict(client, args.parallel)
        t_chain, resp = stream_turn(client, {**common, "input": text, "previous_response_id": prev})
        history.append({"role": "user", "content": text})
        if last:
            if args.evict:
                evict(client, args.parallel)
            t_full, full = stream_turn(client, {**common, "input": history, "store": False})
            out = {
                "history_tokens": full["usage"]["input_tokens"],
                "chained_ttft": t_chain,
                "full_ttft": t_full,
                "chained_cached": resp["usage"]["input_tokens_details"]["cached_tokens"],
                "full_cached": full["usage"]["input_tokens_details"]["cached_tokens"],
            }
        answer = "".join(
            c["text"]
            for item in resp["output"]
            if item["type"] == "message"
            for c in item["content"]
        )
        history.append({"role": "assistant", "content": answer})
        prev = resp["id"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--spawn", action="store_true", help="start an edged server for the run")
    ap.add_argument("--model", default=None)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--words", type=int, default=160, help="words of user text per turn")
    ap.add_argument("--output", type=int, default=32, help="max_output_tokens per turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx-size", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--no-evict",
        dest="evict",
        action="store_false",
        help="leave the slots alone (they may still hold the conversation)",
    )
    args = ap.parse_args()
    proc = None
    url = args.url
    if args.spawn:
        url, proc = spawn_server(
            [
                "--ctx-size",
                str(args.ctx_size),
                "--parallel",
                str(args.parallel),
                "--threads",
                str(args.threads),
            ]
        )
    try:
        with httpx.Client(base_url=url, timeout=600) as client:
            runs = [conversation(client, args, seed) for seed in range(args.rounds)]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
    chained = statistics.median(r["chained_ttft"] for r in runs)
    full = statistics.median(r["full_ttft"] for r in runs)
    print(json.dumps(runs, indent=1))
    mode = "evicted" if args.evict else "warm"
    print(
        f"last turn ({mode} slots), history {runs[0]['history_tokens']} tokens: "
        f"TTFT chained {chained * 1000:.0f} ms, full history {full * 1000:.0f} ms, "
        f"ratio {chained / full:.2f} (target <= 0.2)"
    )


if __name__ == "__main__":
    main()
