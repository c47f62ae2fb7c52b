"""Which llama.cpp pre-tokenizer ('tokenizer.ggml.pre') a tokenizer.json's pre_tokenizer is."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quantize.errors import TokenizerError

# convert_hf_to_gguf.py identifies the pre-tokenizer by hashing the token ids of a probe text,
# which needs the `tokenizers` runtime. We key on the pre_tokenizer's declared structure
# instead: the splitting regexes and flags are what llama.cpp re-implements per name.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

Step = tuple[str, Any]
Signature = tuple[Step, ...]

# Byte-level BPE pre-tokenizers by structure. StarCoder-family vocabularies (SmolLM, SmolLM2)
# split digits individually before GPT-2's byte-level regex; llama.cpp calls that "smollm".
BPE_PRE: dict[Signature, str] = {
    (("ByteLevel", True),): "gpt2",
    (("Digits", True), ("ByteLevel", True)): "smollm",
    (("Split", LLAMA3_REGEX), ("ByteLevel", False)): "llama-bpe",
    (("Split", QWEN2_REGEX), ("ByteLevel", False)): "qwen2",
}
PRE_TO_JSON: dict[str, Mapping[str, Any]] = {}  # filled below: the inverse, for exporters


def _steps(node: Mapping[str, Any] | None) -> list[Step]:
    if not node:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [s for child in node.get("pretokenizers", []) for s in _steps(child)]
    if kind == "ByteLevel":
        return [("ByteLevel", bool(node.get("use_regex", True)))]
    if kind == "Digits":
        return [("Digits", bool(node.get("individual_digits", False)))]
    if kind == "Split":
        pattern = node.get("pattern", {})
        return [("Split", pattern.get("Regex", pattern.get("String")))]
    return [(str(kind), None)]


def signature(tokenizer_json: Mapping[str, Any]) -> Signature:
    """The structural signature of a tokenizer.json's pre_tokenizer."""
    return tuple(_steps(tokenizer_json.get("pre_tokenizer")))


def adds_prefix_space(tokenizer_json: Mapping[str, Any]) -> bool:
    """Whether the byte-level step prepends a space to the text (GGUF add_space_prefix)."""
    node = tokenizer_json.get("pre_tokenizer") or {}
    nodes = node.get("pretokenizers", [node]) if node.get("type") == "Sequence" else [node]
    return any(n.get("type") == "ByteLevel" and n.get("add_prefix_space", False) for n in nodes)


def detect_bpe_pre(tokenizer_json: Mapping[str, Any]) -> str:
    """The llama.cpp pre-tokenizer name for a byte-level BPE tokenizer.json."""
    sig = signature(tokenizer_json)
    try:
        return BPE_PRE[sig]
    except KeyError:
        known = ", ".join(sorted(BPE_PRE.values()))
        raise TokenizerError(f"unknown BPE pre-tokenizer {sig!r} (known: {known})") from None


def _to_json(sig: Signature) -> Mapping[str, Any]:
    nodes: list[dict[str, Any]] = []
    for kind, arg in sig:
        if kind == "ByteLevel":
            nodes.append(
                {
                    "type": "ByteLevel",
                    "add_prefix_space": False,
                    "trim_offsets": True,
                    "use_regex": arg,
                }
            )
        elif kind == "Digits":
            nodes.append({"type": "Digits", "individual_digits": arg})
        else:
            nodes.append(
                {
                    "type": "Split",
                    "pattern": {"Regex": arg},
                    "behavior": "Isolated",
                    "invert": False,
                }
            )
    return nodes[0] if len(nodes) == 1 else {"type": "Sequence", "pretokenizers": nodes}


PRE_TO_JSON.update({name: _to_json(sig) for sig, name in BPE_PRE.items()})
