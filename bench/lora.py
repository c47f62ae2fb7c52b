"""LoRA step cost: decode tokens/s with and without adapters, and with mixed adapter sets.

Builds two random rank-8 adapters of the embedded SmolLM2 (`a` on attention, `b` on the MLP),
converts them with edged-quantize, starts `edged serve --lora ...`, and streams fixed-length
greedy generations (/completion, ignore_eos) in interleaved rounds; medians are reported.

    python bench/lora.py --tokens 64 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.results import wait_healthy
from daemon.config import embedded_model_path
from quantize.lora import convert_lora
from tests.conftest import free_port
from tests.lora.conftest import smollm_config
from tests.lora.peft import ATTN, MLP, random_peft

A = [{"id": 0, "scale": 1.0}]
B = [{"id": 1, "scale": 1.0}]
AB = [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.5}]
# name -> the adapter set of each concurrent stream
CASES: dict[str, list[list[dict[str, Any]]]] = {
    "1 stream, no adapter": [[]],
    "1 stream, adapter a": [A],
    "4 streams, no adapter": [[]] * 4,
    "4 streams, all adapter a": [A] * 4,
    "4 streams, mixed sets (none, a, b, a+b)": [[], A, B, AB],
}


def build(work: Path) -> list[Path]:
    base = work / "base"
    base.mkdir()
    cfg = smollm_config(embedded_model_path())
    (base / "config.json").write_text(json.dumps(cfg))
    out = []
    for name, targets, seed in (("a", ATTN, 1), ("b", MLP, 2)):
        peft = random_peft(work / name, cfg, r=8, targets=targets, strength=0.3, seed=seed)
        out.append(convert_lora(peft, work / f"{name}.gguf", base, "f16", progress=False))
    return out


def one(url: str, lora: list[dict[str, Any]], tokens: int) -> int:
    body = {
        "prompt": "Once upon a time",
        "n_predict": tokens,
        "ignore_eos": True,
        "temperature": 0,
        "cache_prompt": False,
        "lora": lora,
    }
    r = httpx.post(f"{url}/completion", json=body, timeout=600)
    r.raise_for_status()
    return int(r.json()["tokens_predicted"])


def measure(url: str, sets: list[list[dict[str, Any]]], tokens: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(len(sets)) as pool:
        n = sum(pool.map(lambda s: one(url, s, tokens), sets))
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a, b = build(Path(tmp))
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "daemon",
            "serve",
            "--port",
            str(port),
            "--parallel",
            "4",
            "--threads",
            str(args.threads),
            "--lora",
            f"a={a}",
            "--lora",
            f"b={b}",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, timeout=120)
            measure(url, [[]], 8)  # warm-up
            results: dict[str, list[float]] = {name: [] for name in CASES}
            for _ in range(args.rounds):  # interleaved: drift hits every case alike
                for name, sets in CASES.items():
                    results[name].append(measure(url, sets, args.tokens))
                    print(f"{name}: {results[name][-1]:.1f} tokens/s", file=sys.stderr, flush=True)
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"| case | tokens/s (median of {args.rounds}) | runs |")
    print("|---|---|---|")
    for name, runs in results.items():
        shown = ", ".join(f"{r:.1f}" for r in runs)
        print(f"| {name} | {statistics.median(runs):.1f} | {shown} |")


if __name__ == "__main__":
    main()
