"""edged vs llama-cpp-python's own server, side by side on the same model and threads.

Both servers run at once (idle between rounds); rounds interleave A, B, B, A per level so
drift hits both alike. Reports medians of aggregate tokens/s and TTFT p50, and the median of
per-round ratios.

    pip install 'llama-cpp-python[server]==0.3.36'
    python bench/compare.py --levels 1 4 8 --rounds 2 --max-tokens 128
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import Round, run_round, spawn_server

from daemon.config import embedded_model_path

HERE = Path(__file__).resolve().parent


def spawn_peer(model: Path, port: int, threads: int, ctx: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "peer_server.py"),
            "--model",
            str(model),
            "--port",
            str(port),
            "--n_threads",
            str(threads),
            "--n_ctx",
            str(ctx),
            "--interrupt_requests",
            "False",
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-port", type=int, default=8201)
    args = p.parse_args()
    model = embedded_model_path()
    edged_url, edged = spawn_server(["--threads", str(args.threads), "--parallel", "8"])
    peer = spawn_peer(model, args.peer_port, args.threads, 2048)
    peer_url = f"http://127.0.0.1:{args.peer_port}"
    results: dict[tuple[str, int], list[Round]] = {}
    try:
        for url in (edged_url, peer_url):
            asyncio.run(run_round(url, 1, 8, None, 1000))  # warm-up
        n = 0
        for level in args.levels:
            for r in range(args.rounds):
                order = [("edged", edged_url), ("peer", peer_url)]
                if r % 2:
                    order.reverse()
                for name, url in order:
                    rnd = asyncio.run(run_round(url, level, args.max_tokens, None, n * 8))
                    n += 1
                    results.setdefault((name, level), []).append(rnd)
                    print(
                        f"{name} level {level}: {rnd.tokens_per_s:.1f} tok/s, "
                        f"ttft p50 {rnd.ttft_p50:.3f}s",
                        file=sys.stderr,
                    )
    finally:
        for proc in (edged, peer):
            proc.terminate()
            proc.wait()
    print(
        f"max_tokens={args.max_tokens}, {args.threads} threads, {args.rounds} rounds per "
        "level (A,B,B,A), medians (min–max)\n"
    )
    print(
        "| streams | edged tokens/s | peer tokens/s | × (per-round median) "
        "| edged TTFT p50 (s) | peer TTFT p50 (s) | TTFT × |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for level in args.levels:
        e, q = results[("edged", level)], results[("peer", level)]
        tps_ratio = statistics.median(
            a.tokens_per_s / b.tokens_per_s for a, b in zip(e, q, strict=True)
        )
        ttft_ratio = statistics.median(a.ttft_p50 / b.ttft_p50 for a, b in zip(e, q, strict=True))

        def fmt(rs: list[Round], attr: str, digits: int) -> str:
            xs = [getattr(r, attr) for r in rs]
            return f"{statistics.median(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"

        print(
            f"| {level} | {fmt(e, 'tokens_per_s', 1)} | {fmt(q, 'tokens_per_s', 1)} | "
            f"{tps_ratio:.2f} | {fmt(e, 'ttft_p50', 3)} | {fmt(q, 'ttft_p50', 3)} | "
            f"{ttft_ratio:.3f} |"
        )


if __name__ == "__main__":
    main()
