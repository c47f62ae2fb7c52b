"""edged against llama.cpp's own llama-server, side by side, interleaved (issue 13 part 1).

Both servers run the same GGUF with the same threads and slots. Per round, in alternating
order (A, B, B, A, ...): time to first token of a distinct ~1,200-token prompt
(`max_tokens: 1`, the whole answer); then the same prompt again as a greedy 128-token stream,
whose prefix both servers find in their slot, for decode speed at a ~1,200-token context;
then greedy 128-token streams of short chats at 1 and 8 concurrent clients
(end-of-generation tokens banned, so both do the same work); then a greedy 128-token stream
that repeats its context (a code snippet quoted back: where speculation pays). Besides wall times,
each server's own CPU seconds per request are read from /proc: on a machine shared with
other work the wall clock is mostly noise, the work a server spends is not.

    python bench/vs_llama_server.py --rounds 5            # prints a Markdown table
    python bench/vs_llama_server.py --rounds 5 --write    # and puts it into bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from client import Round, run_round, stream_sync
from llama_server import start_llama_server, stop
from load import spawn_server
from perf import free_port
from results import write_section
from scaling import distinct_prompt
from speculation import CODE

from daemon.config import embedded_model_path
from daemon.engine.native.llama import Model

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- vs-llama-server:begin -->", "<!-- vs-llama-server:end -->"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Figures:
    """One server's samples, one per round."""

    ttft: list[float] = field(default_factory=list)
    ttft_cpu: list[float] = field(default_factory=list)
    long_decode: list[float] = field(default_factory=list)
    long_decode_cpu: list[float] = field(default_factory=list)
    decode: dict[int, list[float]] = field(default_factory=dict)
    decode_cpu: dict[int, list[float]] = field(default_factory=dict)
    quote: list[float] = field(default_factory=list)
    quote_cpu: list[float] = field(default_factory=list)


def first_token(url: str, text: str, pid: int) -> tuple[float, float]:
    body = {"prompt": text, "max_tokens": 1, "temperature": 0.0}
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=600)
    r.raise_for_status()
    return time.perf_counter() - t0, cpu_seconds(pid) - cpu0


def timed_stream(url: str, path: str, body: dict[str, Any], pid: int) -> tuple[float, float]:
    """Decode tokens/s (first token to last) and server CPU ms per token of one stream."""
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    result = stream_sync(url, body, path)
    rnd = Round(1, time.perf_counter() - t0, [result])
    return rnd.decode_tokens_per_s, (cpu_seconds(pid) - cpu0) / max(result.tokens, 1) * 1000


def greedy(max_tokens: int, ban: list[int]) -> dict[str, Any]:
    """The fields of a greedy stream that never ends early (end-of-generation banned)."""
    bias = {str(t): -100 for t in ban}
    return {"max_tokens": max_tokens, "temperature": 0.0, "stream": True, "logit_bias": bias}


def long_decode(url: str, text: str, max_tokens: int, ban: list[int], pid: int):
    """Decode tokens/s and server CPU ms per token of one greedy stream continuing `text`,
    measured from its first token to its last (the prompt itself is already in the slot)."""
    body = {"prompt": text, **greedy(max_tokens, ban)}
    return timed_stream(url, "/v1/completions", body, pid)


def quote_decode(url: str, r: int, max_tokens: int, ban: list[int], pid: int):
    """Decode tokens/s and server CPU ms per token of a greedy chat reply that repeats its
    context (code quoted back, as when editing code); the code is distinct per round."""
    code = CODE.replace("parse_header", f"parse_header_{r}")
    ask = f"Here is some code:\n\n{code}\nRepeat it."
    body = {"messages": [{"role": "user", "content": ask}], **greedy(max_tokens, ban)}
    return timed_stream(url, "/v1/chat/completions", body, pid)


def streams(url: str, level: int, max_tokens: int, ban: list[int], offset: int, pid: int):
    cpu0 = cpu_seconds(pid)
    rnd = asyncio.run(run_round(url, level, max_tokens, ban, offset))
    tokens = sum(r.tokens for r in rnd.results)
    return rnd.decode_tokens_per_s, (cpu_seconds(pid) - cpu0) / max(tokens, 1) * 1000


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f} ({min(xs):.3f}–{max(xs):.3f})"


def ratio(a: list[float], b: list[float]) -> float:
    """Median of per-round ratios a/b."""
    return statistics.median(x / y for x, y in zip(a, b, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=1200)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--levels", type=int, nargs="*", default=[1, 8])
    p.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    p.add_argument("--edged-args", nargs="*", default=[])
    p.add_argument(
        "--peer-args", default="", help='more llama-server flags in one string: "-ngl 999"'
    )
    p.add_argument("--tag", default="", help="a RESULTS.md section of its own (e.g. the GPU's)")
    args = p.parse_args()

    model_path = embedded_model_path()
    model = Model(model_path)
    ban = sorted(model.eog_tokens)
    ctx = 2048
    base = [
        *("--threads", str(args.threads), "--parallel", str(args.parallel)),
        *("--ctx-size", str(ctx), *args.edged_args),
    ]
    procs = []
    servers: dict[str, tuple[str, int]] = {}
    try:
        # Each at its default and at its exact setting: edged's default is fast (flash
        # attention, speculation, reuse of every cached token) and `--exact` is bit-exact;
        # llama-server's default (`-fa auto`) turns flash attention on on CPUs.
        for name, extra in (("edged", []), ("edged --exact", ["--exact"])):
            url, proc = spawn_server([*base, *extra])
            procs.append(proc)
            servers[name] = (url, proc.pid)
        for name, extra in (("llama-server -fa off", ["-fa", "off"]), ("llama-server", [])):
            port = free_port()
            peer = start_llama_server(
                model_path,
                port,
                args.threads,
                args.parallel,
                ctx * args.parallel,
                [*extra, *shlex.split(args.peer_args)],
            )
            procs.append(peer)
            servers[name] = (f"http://127.0.0.1:{port}", peer.pid)
        figs = {name: Figures() for name in servers}
        load0 = os.getloadavg()[0]
        for url, pid in servers.values():  # warm-up: graphs, pages, caches
            first_token(url, distinct_prompt(model, 999, 64), pid)
            streams(url, 1, 8, ban, 900, pid)
        seed = 0
        for r in range(args.rounds):
            order = list(servers) if r % 2 == 0 else list(reversed(servers))
            for name in order:
                url, pid = servers[name]
                f = figs[name]
                seed += 1
                text = distinct_prompt(model, seed, args.prompt_tokens)
                wall, cpu = first_token(url, text, pid)
                f.ttft.append(wall)
                f.ttft_cpu.append(cpu)
                tps, ms = long_decode(url, text, args.max_tokens, ban, pid)
                f.long_decode.append(tps)
                f.long_decode_cpu.append(ms)
                line = f"round {r} {name:>20}: ttft {wall:.3f}s (cpu {cpu:.2f}s)"
                line += f", long x1 {tps:.1f} tok/s ({ms:.2f} cpu-ms/tok)"
                for level in args.levels:
                    tps, ms = streams(url, level, args.max_tokens, ban, 100 * r, pid)
                    f.decode.setdefault(level, []).append(tps)
                    f.decode_cpu.setdefault(level, []).append(ms)
                    line += f", x{level} {tps:.1f} tok/s ({ms:.2f} cpu-ms/tok)"
                tps, ms = quote_decode(url, r, args.max_tokens, ban, pid)
                f.quote.append(tps)
                f.quote_cpu.append(ms)
                line += f", quote {tps:.1f} tok/s ({ms:.2f} cpu-ms/tok)"
                print(line, file=sys.stderr, flush=True)
        load1 = os.getloadavg()[0]
    finally:
        for proc in procs:
            stop(proc)
    pairs = [
        ("edged", "llama-server"),
        ("edged --exact", "llama-server -fa off"),
        ("edged --exact", "edged"),  # what --exact costs (issue 26: at most 15 %)
    ]
    rows = [
        "| figure | "
        + " | ".join(figs)
        + " | "
        + " | ".join(f"{a} ÷ {b}" for a, b in pairs)
        + " |",
        "| --- " * (1 + len(figs) + len(pairs)) + "|",
    ]

    def row(label: str, get: Callable[[Figures], list[float]], target: str = "") -> str:
        cells = [med(get(f)) for f in figs.values()]
        ratios = [f"{ratio(get(figs[a]), get(figs[b])):.3f}" for a, b in pairs]
        return f"| {label}{target} | " + " | ".join(cells + ratios) + " |"

    rows.append(
        row(f"TTFT, distinct {args.prompt_tokens}-token prompt (s)", lambda f: f.ttft, " (≤ 1.0)")
    )
    rows.append(row("server CPU for that request (s)", lambda f: f.ttft_cpu))
    rows.append(
        row(
            f"decode tokens/s after that {args.prompt_tokens}-token prompt, 1 stream",
            lambda f: f.long_decode,
            " (≥ 1.0)",
        )
    )
    rows.append(row("server CPU ms per token, that stream", lambda f: f.long_decode_cpu))
    for level in args.levels:
        rows.append(
            row(f"decode tokens/s, {level} stream(s)", lambda f, n=level: f.decode[n], " (≥ 1.0)")
        )
        rows.append(
            row(f"server CPU ms per token, {level} stream(s)", lambda f, n=level: f.decode_cpu[n])
        )
    rows.append(
        row("decode tokens/s, a reply repeating its context", lambda f: f.quote, " (≥ 1.0)")
    )
    rows.append(row("server CPU ms per token, that reply", lambda f: f.quote_cpu))
    today = datetime.date.today().isoformat()
    head = (
        f"`python bench/vs_llama_server.py --rounds {args.rounds}` — {today}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
        f"{load0:.1f} → {load1:.1f} (other work on the machine); {args.threads} threads, "
        f"{args.parallel} slots each, {args.max_tokens}-token greedy streams; four servers "
        "(edged at its fast default and with `--exact`; llama-server at its default, flash "
        "attention on, and with `-fa off`); "
        f"{args.rounds} interleaved rounds, medians (min–max), ratios are medians of "
        "per-round ratios."
    )
    text = "\n".join([head, "", *rows])
    print(text)
    if args.write and args.tag:
        write_section(
            text,
            f"<!-- vs-llama-server-{args.tag}:begin -->",
            f"<!-- vs-llama-server-{args.tag}:end -->",
            f"## Side by side with llama-server: {args.tag}",
        )
    elif args.write:
        write_section(text, BEGIN, END, "## Side by side with llama-server (issue 13)")


if __name__ == "__main__":
    main()
