"""Returning turns of more conversations than slots: the prompt cache (issue 13).

`--conversations` chats with ~`--history`-token first messages take turns round-robin on
servers with `--slots` slots; each turn adds a ~`--turn`-token user message and a short
greedy reply, so a returning conversation always finds its slot taken. Measured: time to
first token (streamed chat completion, first content or finish) of every returning turn on
edged (default `--cache-ram`), llama-server (its default `--cache-ram`) and edged with
`--cache-ram 0`. The three run side by side and each conversation's turn goes to them one
after the other, in a rotating order (interleaved); medians with min–max. Its section of
bench/RESULTS.md is rewritten.

    python bench/prompt_cache.py --conversations 32 --slots 8 --history 1500 --turns 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server import start_llama_server, stop
from load import spawn_server
from perf import free_port, machine, span
from results import write_section

from daemon.config import embedded_model_path
from daemon.engine.native.llama import Model

BEGIN, END = "<!-- prompt-cache:begin -->", "<!-- prompt-cache:end -->"
WORDS = [
    "river",
    "stone",
    "light",
    "winter",
    "garden",
    "market",
    "silver",
    "letter",
    "window",
    "harbor",
    "candle",
    "meadow",
]


def words(rng: random.Random, n_tokens: int, model: Model) -> str:
    """Random common words of about `n_tokens` tokens."""
    out: list[str] = []
    while len(model.tokenize(" ".join(out), add_special=False)) < n_tokens:
        out.extend(rng.choice(WORDS) for _ in range(max(4, (n_tokens - len(out)) // 2)))
    return " ".join(out)


def first_token(
    client: httpx.Client, messages: list[dict[str, str]], reply: int
) -> tuple[float, str]:
    """Seconds to the first content (or the finish) of a streamed greedy reply, and the reply."""
    body = {
        "model": "m",
        "messages": messages,
        "max_tokens": reply,
        "temperature": 0,
        "stream": True,
    }
    start = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choice = (json.loads(line[6:]).get("choices") or [{}])[0]
            piece = (choice.get("delta") or {}).get("content") or ""
            text.append(piece)
            if first is None and (piece or choice.get("finish_reason")):
                first = time.perf_counter() - start
    return (first if first is not None else time.perf_counter() - start), "".join(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--conversations", type=int, default=32)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--history", type=int, default=1500, help="tokens of a first message")
    ap.add_argument("--turn", type=int, default=50, help="tokens a turn's user message adds")
    ap.add_argument("--reply", type=int, default=8, help="max_tokens of each reply")
    ap.add_argument("--turns", type=int, default=2, help="measured returning turns each")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ctx-size", type=int, default=4096, help="per slot")
    ap.add_argument(
        "--off-conversations",
        type=int,
        default=None,
        help="conversations the cache-off server plays (> slots; default all)",
    )
    ap.add_argument("--results", type=Path, default=Path(__file__).parent / "RESULTS.md")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    model_path = embedded_model_path()
    model = Model(model_path)
    common = [
        "--threads",
        str(args.threads),
        "--parallel",
        str(args.slots),
        "--ctx-size",
        str(args.ctx_size),
    ]
    servers: dict[str, str] = {}
    procs = []
    try:
        servers["edged"], p = spawn_server(common)
        procs.append(p)
        servers["edged --cache-ram 0"], p = spawn_server([*common, "--cache-ram", "0"])
        procs.append(p)
        port = free_port()
        procs.append(
            start_llama_server(
                model_path,
                port,
                threads=args.threads,
                parallel=args.slots,
                ctx_size=args.ctx_size * args.slots,
            )
        )
        servers["llama-server"] = f"http://127.0.0.1:{port}"
        clients = {k: httpx.Client(base_url=u, timeout=3600) for k, u in servers.items()}
        n_off = args.off_conversations or args.conversations
        plays = {k: (n_off if "cache-ram 0" in k else args.conversations) for k in servers}
        rng = random.Random(13)
        firsts = [words(rng, args.history, model) for _ in range(args.conversations)]
        talks = {k: [[{"role": "user", "content": f}] for f in firsts] for k in servers}
        ttft: dict[str, list[float]] = {k: [] for k in servers}
        names = list(servers)
        for turn in range(args.turns + 1):
            if turn:
                lines = [words(rng, args.turn, model) for _ in range(args.conversations)]
            for i in range(args.conversations):
                order = names[(i + turn) % 3 :] + names[: (i + turn) % 3]
                for k in order:
                    if i >= plays[k]:
                        continue
                    if turn:
                        talks[k][i].append({"role": "user", "content": lines[i]})
                    t, reply = first_token(clients[k], talks[k][i], args.reply)
                    talks[k][i].append({"role": "assistant", "content": reply})
                    if turn:
                        ttft[k].append(t)
                print(
                    f"turn {turn} conversation {i}: "
                    + ", ".join(f"{k} {ttft[k][-1]:.3f}" for k in names if turn and ttft[k]),
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for p in procs:
            stop(p)
    body = report(args, ttft)
    print(body)
    if not args.no_write:
        write_section(body, BEGIN, END, "## Prompt cache (issue 13)", args.results)


def report(args: argparse.Namespace, ttft: dict[str, list[float]]) -> str:
    edged, peer, off = (
        statistics.median(ttft[k]) for k in ("edged", "llama-server", "edged --cache-ram 0")
    )
    rows = "\n".join(f"| {k} | {len(v)} | {span(v, 3)} |" for k, v in ttft.items())
    date = datetime.date.today().isoformat()
    cmd = " ".join(sys.argv[1:])
    return f"""`python bench/prompt_cache.py {cmd}` — {date}; {machine()}.
Default model (embedded SmolLM2-135M-Instruct Q4_1), {args.threads} threads, \
{args.ctx_size} tokens per slot. {args.conversations} chat conversations take turns \
round-robin, so every returning turn finds its slot taken; each turn adds a ~{args.turn}-token \
user message and a greedy reply of up to {args.reply} tokens. Time to first token of a \
returning turn (s), medians (min–max) over every returning turn; the servers ran side by side \
and took each turn one after the other in a rotating order.

| server | returning turns | TTFT p50 (s) |
| --- | --- | --- |
{rows}

| figure | target | measured | met |
| --- | --- | --- | --- |
| TTFT p50 ÷ llama-server (default --cache-ram) | ≤ 1.0× | {edged / peer:.3f}× | \
{"yes" if edged <= peer else "no"} |
| TTFT p50 ÷ edged --cache-ram 0 | ≤ 0.15× | {edged / off:.3f}× | \
{"yes" if edged <= 0.15 * off else "no"} |"""


if __name__ == "__main__":
    main()
