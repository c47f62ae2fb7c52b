"""Beyond one machine, measured: what the RPC transport costs, and what replicas buy.

1. tokens/s of the model served locally vs split over two `edged rpc-worker`s on loopback
   (the same machine: the difference is the transport's cost, not extra compute);
2. aggregate tokens/s of one daemon pinned to one core vs two daemons behind the shipped
   HAProxy configuration, pinned to one core each (taskset).
The two setups of each part run side by side (all processes up at once, idle between turns)
and take turns round by round (A, B, B, A, ...), so the machine's drift hits both alike.

Needs the RPC venv (.venv-rpc, see README) for part 1 and haproxy for part 2:

    .venv-rpc/bin/python bench/distributed.py --rounds 3 --max-tokens 64
    .venv-rpc/bin/python bench/distributed.py --only replicas
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import run_round
from load import banned_tokens
from results import wait_healthy

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "systemd" / "haproxy" / "edged.cfg"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()


def pinned(cpus: str | None, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv] if cpus and shutil.which("taskset") else argv


def daemon(procs: list, args: list[str], cpus: str | None = None) -> str:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    argv = [sys.executable, "-m", "daemon", "serve", "--port", str(port), *args]
    procs.append(
        subprocess.Popen(
            pinned(cpus, argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    )
    return f"http://127.0.0.1:{port}"


def worker(procs: list, threads: int) -> int:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "daemon",
        "rpc-worker",
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return port
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"worker on {port}")


def measure(url: str, level: int, rounds: int, max_tokens: int, ban: list[int]) -> list[float]:
    return interleaved({"": url}, level, rounds, max_tokens, ban)[""]


def interleaved(
    urls: dict[str, str], level: int, rounds: int, max_tokens: int, ban: list[int]
) -> dict[str, list[float]]:
    """tokens/s per setup, the setups taking turns (A, B, B, A, ...) so drift hits both."""
    out: dict[str, list[float]] = {name: [] for name in urls}
    for url in urls.values():  # warm-up: load, first prefill
        asyncio.run(run_round(url, 1, 4, ban, offset=10_000))
    for r in range(rounds):
        for name in urls if r % 2 == 0 else reversed(list(urls)):
            rnd = asyncio.run(run_round(urls[name], level, max_tokens, ban, offset=r * level))
            out[name].append(rnd.tokens_per_s)
            print(f"round {r} {name}: {rnd.tokens_per_s:.1f} tokens/s", file=sys.stderr)
    return out


def row(name: str, xs: list[float], base: float | None = None) -> str:
    med = statistics.median(xs)
    rel = f"{med / base:.2f}x" if base else "1.00x"
    return f"| {name} | {med:.1f} | {min(xs):.1f}-{max(xs):.1f} | {rel} |"


def bench_rpc(args: argparse.Namespace, ban: list[int]) -> list[str]:
    common = ["--threads", str(args.threads), "--ctx-size", "512", "--parallel", str(args.level)]
    with processes() as procs:
        local_url = daemon(procs, common)
        ports = [worker(procs, args.threads), worker(procs, args.threads)]
        split_url = daemon(procs, [*common, "--rpc", ",".join(f"127.0.0.1:{p}" for p in ports)])
        wait_healthy(local_url)
        wait_healthy(split_url)
        got = interleaved(
            {"local": local_url, "split": split_url}, args.level, args.rounds, args.max_tokens, ban
        )
    local, split = got["local"], got["split"]
    base = statistics.median(local)
    return [
        f"RPC: {args.level} concurrent greedy streams x {args.max_tokens} tokens, "
        f"{args.rounds} rounds, {args.threads} thread(s) per process",
        "",
        "| setup | tokens/s (median) | range | vs local |",
        "|---|---|---|---|",
        row("local (one process)", local),
        row("split over 2 loopback RPC workers", split, base),
    ]


def bench_replicas(args: argparse.Namespace, ban: list[int]) -> list[str]:
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    common = ["--threads", "1", "--ctx-size", "512", "--parallel", str(args.level)]
    with processes() as procs:
        one_url = daemon(procs, common, cpus="0")
        urls = [daemon(procs, common, cpus="0"), daemon(procs, common, cpus="1")]
        for u in [one_url, *urls]:
            wait_healthy(u)
        port = free_port()
        env = dict(
            os.environ, EDGED_LISTEN=f"127.0.0.1:{port}", EDGED_1=urls[0][7:], EDGED_2=urls[1][7:]
        )
        procs.append(
            subprocess.Popen(
                [haproxy, "-db", "-f", str(HAPROXY_CFG)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        time.sleep(3)  # both servers pass two health checks
        got = interleaved(
            {"one": one_url, "two": f"http://127.0.0.1:{port}"},
            args.level,
            args.rounds,
            args.max_tokens,
            ban,
        )
    one, two = got["one"], got["two"]
    base = statistics.median(one)
    return [
        f"Replicas: {args.level} concurrent greedy streams x {args.max_tokens} tokens, "
        f"{args.rounds} rounds, 1 thread per daemon",
        "",
        "| setup | tokens/s (median) | range | vs one |",
        "|---|---|---|---|",
        row("one daemon, taskset -c 0", one),
        row("two daemons (-c 0, -c 1) behind HAProxy", two, base),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--level", type=int, default=4, help="concurrent streams")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=1, help="threads of daemon and workers (RPC)")
    p.add_argument("--only", choices=["rpc", "replicas"], default=None)
    args = p.parse_args()
    ban = banned_tokens()
    lines: list[str] = []
    if args.only in (None, "rpc"):
        lines += [*bench_rpc(args, ban), ""]
    if args.only in (None, "replicas"):
        lines += bench_replicas(args, ban)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
