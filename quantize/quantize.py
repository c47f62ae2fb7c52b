"""Quantize a GGUF file with llama.cpp's own quantizer."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm import tqdm

from quantize.atomic import atomic_output
from quantize.errors import InvalidGGUF, UnknownType

log = logging.getLogger(__name__)

# Names accepted by --type; each maps to llama.cpp's LLAMA_FTYPE_MOSTLY_<NAME>.
QUANT_TYPES: tuple[str, ...] = (
    "F32",
    "F16",
    "BF16",
    "Q8_0",
    "Q6_K",
    "Q5_K_M",
    "Q5_K_S",
    "Q5_0",
    "Q5_1",
    "Q4_K_M",
    "Q4_K_S",
    "Q4_0",
    "Q4_1",
    "Q3_K_L",
    "Q3_K_M",
    "Q3_K_S",
    "Q2_K",
)


def normalize_type(name: str) -> str:
    """Canonical upper-case type name, or UnknownType."""
    canon = name.strip().upper()
    if canon not in QUANT_TYPES:
        raise UnknownType(
            f"unknown quantization type {name!r} (choose from {', '.join(QUANT_TYPES)})"
        )
    return canon


def quantize_gguf(
    src: Path | str,
    dst: Path | str,
    qtype: str,
    threads: int | None = None,
    progress: bool = True,
    allow_requantize: bool = False,
) -> Path:
    """Quantize GGUF src to dst as qtype (e.g. 'Q4_K_M'); dst appears only on success."""
    from quantize import llama  # loading llama.cpp is deferred until a quantization is asked for

    source, target = Path(src), Path(dst)
    canon = normalize_type(qtype)
    if not source.is_file():
        raise InvalidGGUF(f"{source}: no such file")
    with open(source, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InvalidGGUF(f"{source}: not a GGUF file")
    file_type = llama.ftype(canon)
    n_threads = threads if threads and threads > 0 else (os.cpu_count() or 1)
    log.info("quantizing %s to %s (%s, %d threads)", source, target, canon, n_threads)
    bar = tqdm(desc=f"Quantizing to {canon}", unit="tensor", disable=not progress)

    def on_progress(done: int, total: int, tensor: str) -> None:
        bar.total = total
        bar.set_postfix_str(tensor, refresh=False)
        bar.update(done - bar.n)

    try:
        with atomic_output(target) as tmp:
            llama.quantize_file(
                os.fsencode(source),
                os.fsencode(tmp),
                file_type,
                n_threads,
                on_progress,
                allow_requantize,
            )
    finally:
        bar.close()
    return target
