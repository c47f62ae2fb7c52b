"""Load generator: concurrent streaming chat requests against an OpenAI-compatible server.

Reports aggregate completion tokens/s and time to first token at several concurrency
levels. Levels run in interleaved rounds (1, 4, 8, 8, 4, 1, ...) because these machines
drift; medians over rounds are reported.

    python bench/load.py --url http://127.0.0.1:8000 --levels 1 4 8 --rounds 3
    python bench/load.py --spawn            # starts `edged serve` itself on a free port
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import Round, run_round

from daemon.config import embedded_model_path
from daemon.engine.native.llama import Model


def banned_tokens(path: Path | None = None) -> list[int]:
    """End-of-generation token ids of the model, to ban so every stream runs full length."""
    return sorted(Model(path or embedded_model_path()).eog_tokens)


def interleaved(levels: list[int], rounds: int) -> list[int]:
    """A, B, C, C, B, A, ... so that drift hits every level alike."""
    order: list[int] = []
    for r in range(rounds):
        order.extend(levels if r % 2 == 0 else reversed(levels))
    return order


def spawn_server(extra: list[str]) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemon", "serve", "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become healthy")


def spawn_peer(model: Path, port: int, threads: int, ctx: int) -> subprocess.Popen[bytes]:
    """llama-cpp-python's own server (see peer_server.py) on `port`, once it answers."""
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).resolve().parent / "peer_server.py"),
            *("--model", str(model), "--port", str(port), "--n_threads", str(threads)),
            *("--n_ctx", str(ctx), "--interrupt_requests", "False"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("peer server did not start")


def summarize(rounds: list[Round], levels: list[int]) -> list[dict[str, float]]:
    rows = []
    base = statistics.median(r.tokens_per_s for r in rounds if r.level == levels[0])
    for level in levels:
        rs = [r for r in rounds if r.level == level]
        tps = [r.tokens_per_s for r in rs]
        ttft = [r.ttft_p50 for r in rs]
        rows.append(
            {
                "level": level,
                "tps_median": statistics.median(tps),
                "tps_min": min(tps),
                "tps_max": max(tps),
                "ttft_median": statistics.median(ttft),
                "ttft_min": min(ttft),
                "ttft_max": max(ttft),
                "vs_first": statistics.median(tps) / base,
            }
        )
    return rows


def markdown(rows: list[dict[str, float]], max_tokens: int, rounds: int) -> str:
    lines = [
        f"max_tokens={max_tokens}, {rounds} interleaved rounds per level, medians (min–max)",
        "",
        "| streams | aggregate tokens/s | × vs 1 stream | TTFT p50 (s) |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['level']} | {r['tps_median']:.1f} ({r['tps_min']:.1f}–{r['tps_max']:.1f}) "
            f"| {r['vs_first']:.2f} | {r['ttft_median']:.3f} "
            f"({r['ttft_min']:.3f}–{r['ttft_max']:.3f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--spawn", action="store_true", help="start edged serve for the run")
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--model", default=None, help="model name to request")
    p.add_argument("--model-file", type=Path, default=None, help="its GGUF (for its EOG ids)")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args, server_args = p.parse_known_args()
    proc = None
    url = args.url
    if args.spawn:
        url, proc = spawn_server(server_args)
    ban = banned_tokens(args.model_file)
    try:
        asyncio.run(run_round(url, 1, 8, ban, 1000, args.model))  # warm-up
        rounds = []
        for n, level in enumerate(interleaved(args.levels, args.rounds)):
            rnd = asyncio.run(run_round(url, level, args.max_tokens, ban, n * 8, args.model))
            print(
                f"level {level}: {rnd.tokens_per_s:.1f} tok/s, ttft p50 {rnd.ttft_p50:.3f}s",
                file=sys.stderr,
            )
            rounds.append(rnd)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait()
    table = markdown(summarize(rounds, args.levels), args.max_tokens, args.rounds)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
