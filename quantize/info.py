"""Summarize a GGUF file: architecture, size, quantization mix, context, tokenizer, template."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import gguf

from quantize.errors import InvalidGGUF
from quantize.gguf_header import file_type_name, read_header


@dataclass
class GGUFInfo:
    """What `edged-quantize inspect` reports about one GGUF file."""

    path: Path
    architecture: str
    name: str | None
    parameters: int
    file_type: int | None
    tensor_types: dict[str, int] = field(default_factory=dict)
    context_length: int | None = None
    tokenizer_model: str | None = None
    tokenizer_pre: str | None = None
    vocab_size: int = 0
    chat_template: str | None = None

    @property
    def file_type_name(self) -> str:
        """The quantization of the file as llama.cpp names it (Q4_K_M, F16, ...)."""
        return _file_type_name(self.file_type)

    def lines(self) -> list[str]:
        """Human-readable report, one fact per line."""
        mix = ", ".join(
            f"{t}: {n}" for t, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1])
        )
        ftype = _file_type_name(self.file_type)
        template = "no"
        if self.chat_template:
            template = f"yes: {self.chat_template.splitlines()[0][:100]}"
        return [
            f"file:            {self.path}",
            f"name:            {self.name or '-'}",
            f"architecture:    {self.architecture}",
            f"parameters:      {self.parameters:,} ({_human(self.parameters)})",
            f"file type:       {ftype}",
            f"tensor types:    {mix}",
            f"context length:  {self.context_length if self.context_length is not None else '-'}",
            f"tokenizer:       {self.tokenizer_model or '-'} (pre: {self.tokenizer_pre or '-'}, "
            f"{self.vocab_size} tokens)",
            f"chat template:   {template}",
        ]


def _file_type_name(value: int | None) -> str:
    if value is None:
        return "-"
    return file_type_name(value) or str(value)


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _type_name(t: int) -> str:
    try:
        return gguf.GGMLQuantizationType(t).name
    except ValueError:
        return str(t)


def inspect_gguf(path: Path | str) -> GGUFInfo:
    """Read a GGUF file's header (its tensor data is not read)."""
    p = Path(path)
    try:
        h = read_header(p)
    except (OSError, ValueError) as e:
        raise InvalidGGUF(f"{p}: not a readable GGUF file ({e})") from e
    arch = h.get(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise InvalidGGUF(f"{p}: no general.architecture key")
    return GGUFInfo(
        path=p,
        architecture=arch,
        name=h.get(gguf.Keys.General.NAME),
        parameters=sum(t.n_elements for t in h.tensors),
        file_type=h.get(gguf.Keys.General.FILE_TYPE),
        tensor_types=dict(Counter(_type_name(t.type) for t in h.tensors)),
        context_length=h.get(gguf.Keys.LLM.CONTEXT_LENGTH.format(arch=arch)),
        tokenizer_model=h.get(gguf.Keys.Tokenizer.MODEL),
        tokenizer_pre=h.get(gguf.Keys.Tokenizer.PRE),
        vocab_size=h.length(gguf.Keys.Tokenizer.LIST),
        chat_template=h.get(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
    )
