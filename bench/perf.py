"""Every performance figure of edged in one command, side by side in one run.

edged (over HTTP with SSE), a raw llama.cpp decode loop through the same bindings (no
server), and llama-cpp-python's own server (same wheel, `--interrupt_requests False`) run
interleaved per concurrency level (A, B, C, C, B, A, ...), then: time to first token of a
long prompt vs raw prefill of the same tokens, edged's resident memory idle after the load,
and request_id continuation vs a cold request. Medians of per-round ratios are reported.

    pip install -e '.[bench]'
    python bench/perf.py            # rewrites the perf section of bench/RESULTS.md + perf.png
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import continuation
import raw
from client import Round, run_round, stream
from load import spawn_peer, spawn_server
from results import write_section

from daemon.config import embedded_model_path
from daemon.engine.loading.loaded import prompt_tokens
from daemon.engine.native.llama import Model

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- perf:begin -->", "<!-- perf:end -->"


@dataclass
class Sample:
    """One system at one level in one round."""

    tps: float
    decode_tps: float
    ttft: float


@dataclass
class Results:
    """Everything one run measured (also written as JSON next to the plot)."""

    levels: list[int]
    rounds: int
    max_tokens: int
    threads: int
    load: dict[str, dict[int, list[Sample]]] = field(default_factory=dict)
    long_prompt_tokens: int = 0
    long_edged: list[float] = field(default_factory=list)
    long_raw: list[float] = field(default_factory=list)
    rss_bytes: int = 0
    model_bytes: int = 0
    kv_bytes: int = 0
    cont_history: int = 0
    cont: dict[str, list[float]] = field(default_factory=dict)

    def add(self, system: str, level: int, s: Sample) -> None:
        self.load.setdefault(system, {}).setdefault(level, []).append(s)


def load_results(path: Path) -> Results:
    """A run saved as JSON by an earlier `perf.py`."""
    data = json.loads(path.read_text())
    load = data.pop("load")
    res = Results(**data)
    for system, levels in load.items():
        for level, samples in levels.items():
            for x in samples:
                res.add(system, int(level), Sample(**x))
    return res


def sample_of(rnd: Round) -> Sample:
    return Sample(rnd.tokens_per_s, rnd.decode_tokens_per_s, rnd.ttft_p50)


def long_text(seed: int, tokens: int, model: Model) -> str:
    """Distinct filler text of about `tokens` tokens (distinct so no prefix cache helps)."""
    words = tokens
    while True:
        text = continuation.history_text(seed, words)
        n = len(prompt_tokens(model, text))
        if abs(n - tokens) <= 5:
            return text
        words = max(1, round(words * tokens / n))


async def first_token(url: str, text: str) -> float:
    body = {"prompt": text, "max_tokens": 2, "temperature": 0.0, "stream": True}
    return (await stream(url, body, "/v1/completions")).ttft


def rss_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure_load(args: argparse.Namespace, model: Model, res: Results) -> None:
    ban = sorted(model.eog_tokens)
    edged_url, edged = spawn_server(
        ["--threads", str(args.threads), "--parallel", str(args.parallel), *args.edged_args]
    )
    peer = peer_url = None
    if not args.no_peer:
        port = free_port()
        peer = spawn_peer(embedded_model_path(), port, args.threads, 2048)
        peer_url = f"http://127.0.0.1:{port}"
    try:
        for url in filter(None, (edged_url, peer_url)):
            asyncio.run(run_round(url, 1, 8, ban, 1000))  # warm-up
        n = 0
        for level in res.levels:
            for r in range(res.rounds):
                order = ["raw", "edged", "peer"] if r % 2 == 0 else ["peer", "edged", "raw"]
                for system in order:
                    if system == "raw":
                        run = raw.run(
                            model, raw.story_prompts(model, level, n), res.max_tokens, args.threads
                        )
                        s = Sample(run.tokens_per_s, run.decode_tokens_per_s, run.prefill_s)
                    else:
                        url = edged_url if system == "edged" else peer_url
                        if url is None:
                            continue
                        s = sample_of(asyncio.run(run_round(url, level, res.max_tokens, ban, n)))
                    res.add(system, level, s)
                    log(
                        f"{system:>5} x{level}: {s.tps:6.1f} tok/s (decode {s.decode_tps:6.1f}), "
                        f"ttft {s.ttft:.3f}s"
                    )
                n += level
        time.sleep(2)
        res.rss_bytes = rss_of(edged.pid)
        res.model_bytes = embedded_model_path().stat().st_size
        res.kv_bytes = model.kv_bytes(2048 * args.parallel)
        log(f"edged idle RSS {res.rss_bytes / 2**20:.0f} MiB")
        # Long prompt: edged's TTFT vs raw prefill of the same tokens, A, B, B, A.
        res.long_prompt_tokens = args.long_prompt
        for r in range(res.rounds):
            for system in ("raw", "edged") if r % 2 == 0 else ("edged", "raw"):
                text = long_text(10_000 + 2 * r + (system == "edged"), args.long_prompt, model)
                if system == "raw":
                    t = raw.run(model, [prompt_tokens(model, text)], 1, args.threads).prefill_s
                    res.long_raw.append(t)
                else:
                    res.long_edged.append(asyncio.run(first_token(edged_url, text)))
            log(f"long prompt: raw {res.long_raw[-1]:.3f}s, edged {res.long_edged[-1]:.3f}s")
    finally:
        for proc in filter(None, (edged, peer)):
            proc.terminate()
            proc.wait()


def measure_continuation(args: argparse.Namespace, res: Results) -> None:
    url, proc = spawn_server(
        ["--threads", str(args.threads), "--ctx-size", str(args.history + 512), *args.edged_args]
    )
    try:
        cold, warm, restored = continuation.measure(url, args.history, res.rounds, args.parallel)
    finally:
        proc.terminate()
        proc.wait()
    res.cont_history = args.history
    res.cont = {"cold": cold, "continued": warm, "restored": restored}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def ratio(a: list[Sample], b: list[Sample], attr: str) -> float:
    """Median of per-round ratios."""
    return med([getattr(x, attr) / getattr(y, attr) for x, y in zip(a, b, strict=True)])


def span(xs: list[float], digits: int) -> str:
    return f"{med(xs):.{digits}f} ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    for line in (
        Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    ):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB; Python {platform.python_version()}, "
        f"llama-cpp-python {version('llama-cpp-python')}, litestar {version('litestar')}, "
        f"uvicorn {version('uvicorn')}"
    )


def markdown(res: Results, plot: str) -> str:
    L = res.load
    has_peer = "peer" in L
    out = [
        f"`python bench/perf.py` — {datetime.date.today().isoformat()}; {machine()}.",
        f"Default model (embedded SmolLM2-135M-Instruct Q4_1), {res.threads} threads, "
        f"{res.max_tokens}-token greedy streams with distinct chat prompts (end-of-generation "
        "tokens banned by `logit_bias`, so every stream is full length, as in the raw loop); "
        f"{res.rounds} interleaved rounds per level; medians, (min–max), ratios are medians of "
        "per-round ratios.",
        "",
        "| streams | raw tok/s | edged tok/s | edged ÷ raw | edged decode ÷ raw decode "
        + (
            "| peer tok/s | edged ÷ peer | edged TTFT p50 (s) | peer TTFT p50 (s) | TTFT ÷ peer |"
            if has_peer
            else "| edged TTFT p50 (s) |"
        ),
        "| --- " * (10 if has_peer else 6) + "|",
    ]
    for lv in res.levels:
        e, r = L["edged"][lv], L["raw"][lv]
        row = (
            f"| {lv} | {span([x.tps for x in r], 1)} | {span([x.tps for x in e], 1)} | "
            f"{ratio(e, r, 'tps'):.2f} | {ratio(e, r, 'decode_tps'):.2f} | "
        )
        if has_peer:
            p = L["peer"][lv]
            row += (
                f"{span([x.tps for x in p], 1)} | {ratio(e, p, 'tps'):.2f} | "
                f"{span([x.ttft for x in e], 3)} | {span([x.ttft for x in p], 3)} | "
                f"{ratio(e, p, 'ttft'):.3f} |"
            )
        else:
            row += f"{span([x.ttft for x in e], 3)} |"
        out.append(row)
    long_ratio = med([a / b for a, b in zip(res.long_edged, res.long_raw, strict=True)])
    limit = res.model_bytes + res.kv_bytes + 250 * 2**20
    cold = med(res.cont["cold"])
    out += [
        "",
        "Raw = `bench/raw.py`: the same prompts prefilled, then one `llama_decode` per step "
        "with greedy sampling, no server; its tokens/s include the prefill, like a server "
        "round's wall time (edged's also reflect its prefix cache: the chat prompts share the "
        "template's first ~30 tokens, which edged does not recompute and the raw loop does). "
        "Decode-only rates: raw's decode steps; edged's window from the last stream's first "
        "token to the first stream's end.",
        "",
        "| figure | target | measured | met |",
        "| --- | --- | --- | --- |",
    ]

    def target(name: str, goal: str, value: float, ok: bool, unit: str = "×") -> None:
        out.append(f"| {name} | {goal} | {value:.3f}{unit} | {'yes' if ok else 'no'} |")

    one, top = res.levels[0], res.levels[-1]
    v = ratio(L["edged"][one], L["raw"][one], "decode_tps")
    target(f"{one} stream decode tokens/s ÷ raw decode loop", "≥ 0.95×", v, v >= 0.95)
    v = ratio(L["edged"][top], L["raw"][top], "decode_tps")
    target(f"{top} streams decode tokens/s ÷ raw batched decode", "≥ 0.95×", v, v >= 0.95)
    if has_peer:
        v = ratio(L["edged"][top], L["peer"][top], "tps")
        target(f"{top} streams tokens/s ÷ llama-cpp-python server", "≥ 1.8×", v, v >= 1.8)
        v = ratio(L["edged"][top], L["peer"][top], "ttft")
        target(f"{top} streams TTFT p50 ÷ llama-cpp-python server", "≤ 0.1×", v, v <= 0.1)
    target(
        f"TTFT of a {res.long_prompt_tokens}-token prompt ÷ raw prefill",
        "≤ 1.1×",
        long_ratio,
        long_ratio <= 1.1,
    )
    out.append(
        f"| idle RSS after the load, 8 slots | ≤ model {res.model_bytes / 2**20:.0f} MiB + KV "
        f"{res.kv_bytes / 2**20:.0f} MiB + 250 MiB = {limit / 2**20:.0f} MiB | "
        f"{res.rss_bytes / 2**20:.0f} MiB | {'yes' if res.rss_bytes <= limit else 'no'} |"
    )
    v = med(res.cont["continued"]) / cold
    target(f"continue a {res.cont_history}-token request_id: TTFT ÷ cold", "≤ 0.2×", v, v <= 0.2)
    out += [
        "",
        f"Long prompt ({res.long_prompt_tokens} tokens): edged TTFT "
        f"{span(res.long_edged, 3)} s, raw prefill {span(res.long_raw, 3)} s.",
        f"Continuation ({res.cont_history}-token history): cold {span(res.cont['cold'], 3)} s, "
        f"continued from the slot {span(res.cont['continued'], 3)} s, restored from the store "
        f"{span(res.cont['restored'], 3)} s ({med(res.cont['restored']) / cold:.3f}× cold).",
        "",
        f"![tokens/s and time to first token against concurrency]({plot})",
    ]
    return "\n".join(out)


def plot(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for system, style in (("edged", "o-"), ("peer", "s--"), ("raw", "^:")):
        if system not in res.load:
            continue
        label = {"peer": "llama-cpp-python server", "raw": "raw llama.cpp loop"}.get(system, system)
        lv = res.levels
        a.plot(lv, [med([x.tps for x in res.load[system][v]]) for v in lv], style, label=label)
        if system != "raw":
            b.plot(lv, [med([x.ttft for x in res.load[system][v]]) for v in lv], style, label=label)
    a.set(
        xlabel="concurrent streams",
        ylabel="aggregate tokens/s (prefill included)",
        title="Throughput",
    )
    a.set_ylim(bottom=0)
    b.set(
        xlabel="concurrent streams",
        ylabel="TTFT p50 (s)",
        title="Time to first token",
        yscale="log",
    )
    for ax in (a, b):
        ax.set_xticks(res.levels)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=8)
    p.add_argument("--long-prompt", type=int, default=1000)
    p.add_argument("--history", type=int, default=2000)
    p.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    p.add_argument(
        "--edged-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra `edged serve` flags (last on the line)",
    )
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--plot", type=Path, default=HERE / "perf.png")
    p.add_argument("--from-json", type=Path, help="re-render a saved run, measure nothing")
    args = p.parse_args()
    if args.from_json:
        res = load_results(args.from_json)
    else:
        model = Model(embedded_model_path())
        res = Results(args.levels, args.rounds, args.max_tokens, args.threads)
        measure_load(args, model, res)
        measure_continuation(args, res)
        args.plot.with_suffix(".json").write_text(json.dumps(asdict(res), indent=1))
    plot(res, args.plot)
    body = markdown(res, args.plot.name)
    print(body)
    write_section(body, BEGIN, END, "## Performance (issue 7)", args.results)


if __name__ == "__main__":
    main()
