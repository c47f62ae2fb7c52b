"""A 10-turn Responses conversation: previous_response_id chained vs the history resent.

Every turn adds a paragraph of user text, so the history grows past 2,000 tokens. The chained
run names the previous response and sends only the new input; the stateless run (what every
peer's stateless mode costs) resends the whole conversation with `store: false`. Both see the
same conversation (the stateless run reuses the chained run's answers). Reported: time to first
token of the last turn, median over rounds, with the slots either still holding the
conversation ("warm") or taken by other traffic first ("evicted", a busy server's case).

With `--peer`, llama.cpp's own `llama-server` (bench/build_llama_server.sh; same llama.cpp)
runs the same user turns through its `/v1/responses`, which has no `previous_response_id`:
every turn resends the history (its answers included), and llama-server reuses whatever its
slots or its RAM prompt cache (`--cache-ram`) still hold. Peer and edged conversations run
in interleaved rounds (edged first in even rounds, the peer first in odd ones).

    python bench/responses_chain.py --spawn --rounds 3
    python bench/responses_chain.py --spawn --peer --rounds 3 --out /tmp/chain.md
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server import start_llama_server, stop
from load import spawn_server

from daemon.config import embedded_model_path

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
        if r.status_code >= 400:
            r.read()
            raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                continue
            event = json.loads(payload)
            if first is None and event["type"] in (
                "response.output_text.delta",
                "response.function_call_arguments.delta",
            ):
                first = time.perf_counter() - start
            if event["type"] in ("response.completed", "response.incomplete"):
                final = event["response"]
    return (first if first is not None else time.perf_counter() - start), final


def answer_text(resp: dict[str, Any]) -> str:
    return "".join(
        c.get("text", "")
        for item in resp.get("output", [])
        if item.get("type") == "message"
        for c in item.get("content", [])
    )


def evict(client: httpx.Client, slots: int) -> None:
    """Occupy every edged slot with other requests, so none still holds the conversation."""
    body = {
        "prompts": [
            {"request_id": f"evict-{time.time()}-{i}", "prompt": f"Note {i}:"} for i in range(slots)
        ],
        "generation_config": {"do_sample": False, "max_new_tokens": 2},
    }
    client.post("/api/generate-batch", json=body).raise_for_status()


def evict_peer(client: httpx.Client, slots: int) -> None:
    """Occupy every llama-server slot at once with short unrelated prompts."""
    stamp = time.time()

    def one(i: int) -> None:
        body = {"prompt": f"Note {stamp} {i}:", "n_predict": 2, "temperature": 0}
        client.post("/completion", json=body).raise_for_status()

    with ThreadPoolExecutor(slots) as pool:
        list(pool.map(one, range(slots)))


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
        history.append({"role": "assistant", "content": answer_text(resp)})
        prev = resp["id"]
    return out


def peer_conversation(client: httpx.Client, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The same user turns against llama-server's /v1/responses, the history resent each turn."""
    rng = random.Random(seed)
    common = {"max_output_tokens": args.output, "temperature": 0}
    inputs = [paragraph(rng, args.words) for _ in range(args.turns)]
    history: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for k, text in enumerate(inputs):
        last = k == args.turns - 1
        if last and args.evict:
            evict_peer(client, args.parallel)
        history.append({"role": "user", "content": text})
        ttft, resp = stream_turn(client, {**common, "input": history})
        if last:
            usage = resp.get("usage") or {}
            out = {
                "history_tokens": usage.get("input_tokens"),
                "peer_ttft": ttft,
            }
        # An output message item: llama-server takes assistant turns only in this form.
        history.append(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": answer_text(resp)}],
            }
        )
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})"


def markdown(args: argparse.Namespace, runs: list[dict[str, Any]], peer: bool) -> str:
    mode = "evicted" if args.evict else "warm"
    chained = [r["chained_ttft"] for r in runs]
    full = [r["full_ttft"] for r in runs]
    ratio = [r["chained_ttft"] / r["full_ttft"] for r in runs]
    lines = [
        f"{args.turns} turns of ~{args.words} words, {args.output} output tokens each, "
        f"last turn's history {min(r['history_tokens'] for r in runs)}–"
        f"{max(r['history_tokens'] for r in runs)} tokens; {len(runs)} rounds, {mode} slots, "
        f"--parallel {args.parallel}, {args.threads} threads; medians (min–max)",
        "",
        "| last turn | TTFT (s) | ÷ edged resent |",
        "| --- | --- | --- |",
        f"| edged, previous_response_id chained | {fmt(chained)} | "
        f"{statistics.median(ratio):.3f} |",
        f"| edged, full history resent (`store: false`) | {fmt(full)} | 1.000 |",
    ]
    if peer:
        pt = [r["peer_ttft"] for r in runs]
        pr = [r["peer_ttft"] / r["full_ttft"] for r in runs]
        cp = [r["chained_ttft"] / r["peer_ttft"] for r in runs]
        lines.append(
            f"| llama-server `/v1/responses`, full history resent | {fmt(pt)} | "
            f"{statistics.median(pr):.3f} |"
        )
        lines += [
            "",
            f"edged chained ÷ llama-server: {statistics.median(cp):.3f} (median of "
            "per-round ratios).",
        ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--spawn", action="store_true", help="start an edged server for the run")
    ap.add_argument("--peer", action="store_true", help="start llama-server side by side")
    ap.add_argument("--peer-url", default=None, help="a running llama-server instead")
    ap.add_argument("--model", default=None)
    ap.add_argument("--model-file", type=Path, default=None, help="GGUF for the peer")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--words", type=int, default=160, help="words of user text per turn")
    ap.add_argument("--output", type=int, default=32, help="max_output_tokens per turn")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx-size", type=int, default=8192, help="per sequence")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    ap.add_argument(
        "--no-evict",
        dest="evict",
        action="store_false",
        help="leave the slots alone (they may still hold the conversation)",
    )
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    url = args.url
    peer_url = args.peer_url
    try:
        if args.spawn:
            url, proc = spawn_server(
                [
                    *("--ctx-size", str(args.ctx_size), "--parallel", str(args.parallel)),
                    *("--threads", str(args.threads)),
                ]
            )
            procs.append(proc)
        if args.peer and not peer_url:
            port = free_port()
            procs.append(
                start_llama_server(
                    args.model_file or embedded_model_path(),
                    port,
                    threads=args.threads,
                    parallel=args.parallel,
                    # llama-server's --ctx-size is shared by its slots.
                    ctx_size=args.ctx_size * args.parallel,
                )
            )
            peer_url = f"http://127.0.0.1:{port}"
        runs: list[dict[str, Any]] = []
        with httpx.Client(base_url=url, timeout=900) as client:
            peer_client = httpx.Client(base_url=peer_url, timeout=900) if peer_url else None
            for seed in range(args.rounds):
                if peer_client is not None and seed % 2 == 1:
                    p = peer_conversation(peer_client, args, seed)
                    run = conversation(client, args, seed)
                elif peer_client is not None:
                    run = conversation(client, args, seed)
                    p = peer_conversation(peer_client, args, seed)
                else:
                    run, p = conversation(client, args, seed), {}
                run.update({f"peer_{k}" if k == "history_tokens" else k: v for k, v in p.items()})
                print(json.dumps(run), file=sys.stderr)
                runs.append(run)
            if peer_client is not None:
                peer_client.close()
    finally:
        for proc in procs:
            if proc is not None:
                stop(proc)
    table = markdown(args, runs, peer_url is not None)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
