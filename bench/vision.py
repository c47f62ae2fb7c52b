"""edged against llama-server, both with a vision projector (`--mmproj`), side by side.

The model is one of the test suite's vision models (nothing is downloaded): by default the
embedded SmolLM2 with SmolVLM's two image-framing tokens and a small random SmolVLM
(Idefics3) projector converted by `edged-quantize convert --mmproj`; with `--family qwen2vl`
SmolLM2 as a qwen2vl (M-RoPE) model with a small random Qwen2-VL projector, whose images
take fewer positions than KV cells (tests/media/tiny_qwen2vl.py). Per round, in alternating order
(A, B, B, A, ...): time to first token of a chat with one image never seen before, then of
the returning turn of that conversation (the same image, the answer, a new question), which
a server that keeps the image's KV (slot or prompt cache) answers without encoding or
prefilling the image again. Medians over the rounds.

    python bench/vision.py --rounds 5            # prints a Markdown table
    python bench/vision.py --rounds 5 --write    # and puts it into bench/RESULTS.md
    python bench/vision.py --family qwen2vl --rounds 5 --write
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gguf
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llama_server import start_llama_server, stop
from load import spawn_server
from perf import free_port
from results import write_section

from daemon.config import embedded_model_path
from quantize.mmproj import convert_mmproj
from tests.media.conftest import IMAGE_TOKENS, with_tokens
from tests.media.tiny_qwen2vl import write_lm as write_qwen_lm
from tests.media.tiny_qwen2vl import write_mmproj as write_qwen_mmproj
from tests.media.tiny_vlm import png_bytes, sample_image, write_checkpoint

QUESTION = "Describe the picture in one sentence."
FOLLOW_UP = "And what colours does it have?"


@dataclass(frozen=True)
class Family:
    """A vision model of the tests, how it is made, and the images it is shown."""

    make: Callable[[Path], tuple[Path, Path]]
    image_size: int  # pixels a side
    what: str  # for the table's caption
    begin: str
    end: str
    heading: str


def make_idefics3(work: Path) -> tuple[Path, Path]:
    """The language model and its F16 SmolVLM projector, written under `work`."""
    smol = embedded_model_path()
    lm = with_tokens(smol, work / "lm.gguf", IMAGE_TOKENS)
    ckpt = write_checkpoint(work / "ckpt", _hidden(smol))
    return lm, convert_mmproj(ckpt, work / "mmproj.f16.gguf", "f16", progress=False)


def make_qwen2vl(work: Path) -> tuple[Path, Path]:
    """SmolLM2 as a qwen2vl model and its F32 Qwen2-VL projector, written under `work`."""
    smol = embedded_model_path()
    lm = write_qwen_lm(smol, work / "qwen.gguf")
    return lm, write_qwen_mmproj(work / "mmproj.gguf", _hidden(smol))


def _hidden(gguf_path: Path) -> int:
    field = gguf.GGUFReader(gguf_path).get_field("llama.embedding_length")
    assert field is not None
    return int(field.contents())


FAMILIES = {
    "idefics3": Family(
        make_idefics3,
        32,
        "the test suite's vision model (SmolLM2-135M + a random SmolVLM projector, F16)",
        "<!-- vision:begin -->",
        "<!-- vision:end -->",
        "## Images: edged and llama-server with --mmproj",
    ),
    "qwen2vl": Family(
        make_qwen2vl,
        64,  # 8 × 8 tokens at 8 positions: the M-RoPE layout
        "the test suite's M-RoPE model (SmolLM2-135M as qwen2vl + a random Qwen2-VL "
        "projector, F32), 64 × 64 images",
        "<!-- vision-mrope:begin -->",
        "<!-- vision-mrope:end -->",
        "## Images on an M-RoPE model (Qwen2-VL's positions): edged and llama-server",
    ),
}


def image_part(seed: int, size: int) -> dict[str, object]:
    b64 = base64.b64encode(png_bytes(sample_image(size=size, seed=seed))).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{b64}"}}


def first_token(url: str, messages: list[dict[str, object]], max_tokens: int) -> tuple[float, str]:
    """Seconds to the first streamed content, and the whole greedy answer."""
    body = {
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.perf_counter()
    first = None
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            delta = json.loads(line[5:])["choices"]
            piece = delta[0]["delta"].get("content") if delta else None
            if piece:
                first = first if first is not None else time.perf_counter() - t0
                text.append(piece)
    return (first if first is not None else time.perf_counter() - t0), "".join(text)


def conversation(url: str, seed: int, size: int) -> tuple[float, float]:
    """(first turn's TTFT, returning turn's TTFT) of one conversation about a new image."""
    part = image_part(seed, size)
    turn = [{"role": "user", "content": [part, {"type": "text", "text": QUESTION}]}]
    ttft1, answer = first_token(url, turn, 24)
    turn += [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": FOLLOW_UP},
    ]
    ttft2, _ = first_token(url, turn, 1)
    return ttft1, ttft2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--write", action="store_true", help="write the table into RESULTS.md")
    p.add_argument("--family", choices=sorted(FAMILIES), default="idefics3")
    args = p.parse_args()
    family = FAMILIES[args.family]
    with tempfile.TemporaryDirectory(prefix="edged-vision-") as tmp:
        lm, proj = family.make(Path(tmp))
        common = ("--threads", str(args.threads), "--ctx-size", "4096", "--parallel", "2")
        edged_url, edged = spawn_server(["--model", str(lm), "--mmproj", str(proj), *common])
        port = free_port()
        peer = start_llama_server(
            lm, port, args.threads, 2, 8192, ["--mmproj", str(proj), "--jinja"]
        )
        peer_url = f"http://127.0.0.1:{port}"
        servers = {"edged": edged_url, "llama-server": peer_url}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in servers}
        try:
            for url in servers.values():  # warm-up: weights paged in, kernels chosen
                conversation(url, 999, family.image_size)
            for r in range(args.rounds):
                order = list(servers) if r % 2 == 0 else list(reversed(servers))
                for name in order:
                    times[name].append(conversation(servers[name], 100 + r, family.image_size))
                    print(name, r, times[name][-1], file=sys.stderr)
        finally:
            edged.terminate()
            edged.wait(30)
            stop(peer)

    def med(name: str, i: int) -> float:
        return statistics.median(t[i] for t in times[name])

    rows = [
        ("TTFT, chat with a new image (s)", 0),
        ("TTFT, returning turn with the same image (s)", 1),
    ]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"{stamp}, {platform.machine()}, {args.threads} threads, {args.rounds} rounds, "
        f"interleaved, medians; {family.what}, both servers at their defaults with "
        "`--mmproj`.",
        "",
        "| | edged | llama-server | edged ÷ llama-server |",
        "| --- | --- | --- | --- |",
    ]
    for label, i in rows:
        a, b = med("edged", i), med("llama-server", i)
        lines.append(f"| {label} | {a:.3f} | {b:.3f} | {a / b:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(table, family.begin, family.end, family.heading)


if __name__ == "__main__":
    main()
