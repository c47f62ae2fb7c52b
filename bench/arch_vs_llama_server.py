"""Greedy tokens of edged and llama-server on the tiny architecture models (issue 29 item 4).

The models of tests/arch/models.py (sliding window: Gemma 2 with an 80-token window;
recurrent: Mamba 2; mixture of experts: Qwen3 MoE) are written with the embedded tokenizer,
then served by edged and by llama-server built from the pinned sdist at equal settings:
edged `--exact` against `llama-server -fa off`, edged's default against `-fa on`; one slot
each, the same per-slot context; llama-server with `--swa-full` (edged keeps the full
sliding-window cache). Per model, three requests in order: a prompt inside the window, one
beyond it, then that one's returning turn (the prompt, its answer and more), which each
server serves from what its slot or cache kept. Prints a Markdown table: whether the
greedy tokens are equal, and the first index where they differ.

    python bench/arch_vs_llama_server.py                  # llama-server --swa-full
    python bench/arch_vs_llama_server.py --window-cache   # llama-server's default cache
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.arch.models
from llama_server import start_llama_server, stop
from load import spawn_server
from perf import free_port

from daemon.config import embedded_model_path
from tests.arch.models import ARCHS, WINDOW, write_model

CTX = 512
WORDS = ["river", "stone", "light", "winter", "garden", "market", "silver", "letter"]


def text(n_words: int, seed: int) -> str:
    return " ".join(WORDS[(seed * 3 + i * i) % len(WORDS)] + str(i % 7) for i in range(n_words))


def complete(url: str, prompt: list[int], n: int) -> list[int]:
    """Greedy token ids from llama-server's /completion (edged speaks it too)."""
    body = {
        "prompt": prompt,
        "n_predict": n,
        "temperature": 0.0,
        "cache_prompt": True,
        "return_tokens": True,
        "ignore_eos": True,
    }
    r = httpx.post(f"{url}/completion", json=body, timeout=300)
    r.raise_for_status()
    return list(r.json()["tokens"])


def tokenize(url: str, content: str) -> list[int]:
    r = httpx.post(f"{url}/tokenize", json={"content": content}, timeout=60)
    r.raise_for_status()
    return list(r.json()["tokens"])


def script(url: str, n: int) -> dict[str, list[int]]:
    """The three requests of one model, in order, on one server."""
    inside = tokenize(url, text(WINDOW // 3, 1))[: WINDOW - 10]
    beyond = tokenize(url, text(WINDOW, 2))[: 3 * WINDOW]
    out: dict[str, list[int]] = {}
    out["inside window"] = complete(url, inside, n)
    out["beyond window"] = complete(url, beyond, n)
    turn = beyond + out["beyond window"] + tokenize(url, " And then what happened?")
    out["returning turn"] = complete(url, turn, n)
    return out


def first_difference(a: list[int], b: list[int]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return str(i)
    return "-" if len(a) == len(b) else str(min(len(a), len(b)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=16)
    p.add_argument(
        "--window-cache",
        action="store_true",
        help="llama-server at its default (`swa_full` off: window layers keep the window)",
    )
    args = p.parse_args()
    swa = [] if args.window_cache else ["--swa-full"]
    pairs = (
        ("edged --exact", ["--exact"], "llama-server -fa off", ["-fa", "off"]),
        ("edged", [], "llama-server -fa on", ["-fa", "on"]),
    )
    rows = ["| model | edged | llama-server | request | equal | first difference |"]
    rows.append("| --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ARCHS:
            path = write_model(kind, Path(tmp) / f"tiny-{kind}.gguf", embedded_model_path())
            for ours, our_args, theirs, their_args in pairs:
                flags = ["--model", str(path), "--parallel", "1", "--ctx-size", str(CTX)]
                url, proc = spawn_server([*flags, "--threads", str(args.threads), *our_args])
                try:
                    mine = script(url, args.tokens)
                finally:
                    proc.terminate()
                    proc.wait(30)
                port = free_port()
                peer = start_llama_server(
                    path,
                    port,
                    args.threads,
                    parallel=1,
                    ctx_size=CTX,
                    extra_args=[*swa, *their_args],
                )
                try:
                    ref = script(f"http://127.0.0.1:{port}", args.tokens)
                finally:
                    stop(peer)
                for name, toks in mine.items():
                    same = "yes" if toks == ref[name] else "no"
                    diff = first_difference(toks, ref[name])
                    rows.append(f"| {kind} | {ours} | {theirs} | {name} | {same} | {diff} |")
                    print(rows[-1], flush=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
