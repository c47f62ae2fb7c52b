"""Turn a checkpoint's tokenizer files into a GGUF vocabulary (BPE, SentencePiece or WordPiece)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from quantize import pretokenizers, sentencepiece
from quantize.errors import TokenizerError

TT = gguf.TokenType


@dataclass
class Vocab:
    """A GGUF vocabulary: tokenizer model, pre-tokenizer, tokens and their types (and scores)."""

    model: str  # "gpt2", "llama" or "bert"
    pre: str
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    add_space_prefix: bool | None = None
    # Special token ids known from the tokenizer itself, used where gguf.SpecialVocab finds none.
    special_ids: dict[str, int] = field(default_factory=dict)

    def add_to(self, writer: gguf.GGUFWriter, directory: Path) -> None:
        """Write the vocabulary, merges, special token ids and chat template."""
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        special = gguf.SpecialVocab(
            directory, load_merges=self.model == "gpt2", n_vocab=len(self.tokens)
        )
        if self.model == "gpt2" and not special.merges:
            raise TokenizerError(f"{directory}: BPE tokenizer without merges")
        for typ, idx in self.special_ids.items():
            special.special_token_ids.setdefault(typ, idx)
        special.add_to_gguf(writer, quiet=True)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path.name}: unreadable ({e})") from e


def _looks_special(text: str) -> bool:
    """Added tokens that behave as control tokens even when not flagged special."""
    return (text.startswith("<|") and text.endswith("|>")) or text in (
        "<pad>",
        "<mask>",
        "<s>",
        "</s>",
    )


def _by_id(
    vocab: Mapping[str, int], added: list[Mapping[str, Any]], size: int
) -> tuple[list[str], list[int]]:
    """Tokens ordered by id with GGUF token types; holes become [PADn] UNUSED tokens.

    UNUSED as llama.cpp's converter types them: a USER_DEFINED "[PAD5]" would be matched in
    prompt text and map a literal "[PAD5]" typed by a user to an untrained embedding row.
    """
    tokens: list[str | None] = [None] * size
    types = [int(TT.NORMAL)] * size
    for text, idx in vocab.items():
        if idx >= size:
            raise TokenizerError(f"token {text!r} has id {idx} beyond vocab_size {size}")
        tokens[idx] = text
    for tok in added:
        idx = int(tok["id"])
        if idx >= size:
            raise TokenizerError(
                f"added token {tok['content']!r} has id {idx} beyond vocab_size {size}"
            )
        tokens[idx] = tok["content"]
        control = tok.get("special", False) or _looks_special(tok["content"])
        types[idx] = int(TT.CONTROL if control else TT.USER_DEFINED)
    out: list[str] = []
    for i, text in enumerate(tokens):
        if text is None:
            out.append(f"[PAD{i}]")
            types[i] = int(TT.UNUSED)
        else:
            out.append(text)
    return out, types


def _vocab_size(config: Mapping[str, Any], tokenizer: Mapping[str, Any]) -> int:
    model_vocab = tokenizer.get("model", {}).get("vocab", {})
    ids = list(model_vocab.values()) if isinstance(model_vocab, dict) else []
    ids += [int(t["id"]) for t in tokenizer.get("added_tokens", [])]
    needed = max(ids) + 1 if ids else 0
    return max(int(config.get("vocab_size") or 0), needed)


def load_bpe(directory: Path, config: Mapping[str, Any], tokenizer: Mapping[str, Any]) -> Vocab:
    """Byte-level BPE (GPT-2 family: SmolLM, Llama 3, Qwen2) from tokenizer.json."""
    model = tokenizer["model"]
    if model.get("byte_fallback"):
        raise TokenizerError(
            f"{directory}: SentencePiece-style BPE (byte_fallback) needs tokenizer.model"
        )
    tokens, types = _by_id(
        model["vocab"], tokenizer.get("added_tokens", []), _vocab_size(config, tokenizer)
    )
    pre = pretokenizers.detect_bpe_pre(tokenizer)
    return Vocab(
        "gpt2", pre, tokens, types, add_space_prefix=pretokenizers.adds_prefix_space(tokenizer)
    )


def load_wordpiece(
    directory: Path, config: Mapping[str, Any], tokenizer: Mapping[str, Any]
) -> Vocab:
    """BERT WordPiece in llama.cpp's phantom-space form ('##ing' -> 'ing', 'go' -> '▁go')."""
    size = _vocab_size(config, tokenizer)
    tokens, types = _by_id(tokenizer["model"]["vocab"], tokenizer.get("added_tokens", []), size)
    prefix = tokenizer["model"].get("continuing_subword_prefix", "##")

    def phantom(text: str, kind: int) -> str:
        if kind == TT.CONTROL:
            return text
        return text[len(prefix) :] if text.startswith(prefix) else "\u2581" + text

    return Vocab(
        "bert", "default", [phantom(t, k) for t, k in zip(tokens, types, strict=True)], types
    )


def load_wordpiece_txt(directory: Path, config: Mapping[str, Any]) -> Vocab:
    """WordPiece from a bare vocab.txt (older BERT checkpoints without tokenizer.json)."""
    lines = (directory / "vocab.txt").read_text(encoding="utf-8").splitlines()
    added = [
        {"id": i, "content": t, "special": True}
        for i, t in enumerate(lines)
        if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
    ]
    fake = {"model": {"vocab": {t: i for i, t in enumerate(lines)}}, "added_tokens": added}
    return load_wordpiece(directory, config, fake)


def load_sentencepiece(directory: Path, config: Mapping[str, Any]) -> Vocab:
    """SentencePiece (Llama 2, Mistral, TinyLlama) from tokenizer.model plus added tokens."""
    spm = sentencepiece.parse((directory / "tokenizer.model").read_bytes())
    tokens = [p.text for p in spm.pieces]
    scores = [p.score for p in spm.pieces]
    types = [p.type for p in spm.pieces]
    added: list[Mapping[str, Any]] = []
    if (directory / "tokenizer.json").is_file():
        added = _read_json(directory / "tokenizer.json").get("added_tokens", [])
    for tok in added:
        idx = int(tok["id"])
        if idx < len(tokens):
            continue  # already a piece of the model
        while len(tokens) < idx:
            tokens.append(f"[PAD{len(tokens)}]")
            scores.append(-1000.0)
            types.append(int(TT.UNUSED))
        tokens.append(tok["content"])
        scores.append(-1000.0)
        types.append(int(TT.CONTROL if tok.get("special") else TT.USER_DEFINED))
    size = int(config.get("vocab_size") or len(tokens))
    if len(tokens) > size:
        raise TokenizerError(f"tokenizer has {len(tokens)} tokens but config vocab_size is {size}")
    for i in range(len(tokens), size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(int(TT.UNUSED))
    return Vocab(
        "llama",
        "default",
        tokens,
        types,
        scores,
        spm.add_dummy_prefix,
        _spm_special_ids(directory, tokens, types),
    )


def _spm_special_ids(directory: Path, tokens: list[str], types: list[int]) -> dict[str, int]:
    """Special ids without tokenizer.json: tokenizer_config.json's token names looked up among
    the pieces (gguf.SpecialVocab resolves them through tokenizer.json only), and <unk>."""
    ids: dict[str, int] = {}
    if int(TT.UNKNOWN) in types:
        ids["unk"] = types.index(int(TT.UNKNOWN))
    config_path = directory / "tokenizer_config.json"
    config = _read_json(config_path) if config_path.is_file() else {}
    index = {text: i for i, text in reversed(list(enumerate(tokens)))}
    for typ in ("bos", "eos", "unk", "pad"):
        entry = config.get(f"{typ}_token")
        name = entry.get("content") if isinstance(entry, dict) else entry
        if isinstance(name, str) and name in index:
            ids[typ] = index[name]
    return ids


def load_vocab(directory: Path, config: Mapping[str, Any], kind: str) -> Vocab:
    """Pick the tokenizer reader for an architecture's tokenizer kind and the files present."""
    tj_path = directory / "tokenizer.json"
    if kind == "wordpiece":
        if tj_path.is_file():
            tokenizer = _read_json(tj_path)
            if tokenizer.get("model", {}).get("type") != "WordPiece":
                raise TokenizerError(
                    f"{tj_path.name}: expected a WordPiece model for a BERT checkpoint"
                )
            return load_wordpiece(directory, config, tokenizer)
        if (directory / "vocab.txt").is_file():
            return load_wordpiece_txt(directory, config)
        raise TokenizerError(f"{directory}: no tokenizer.json or vocab.txt")
    if (directory / "tokenizer.model").is_file():
        return load_sentencepiece(directory, config)
    if tj_path.is_file():
        tokenizer = _read_json(tj_path)
        if tokenizer.get("model", {}).get("type") != "BPE":
            raise TokenizerError(
                f"{tj_path.name}: model type {tokenizer.get('model', {}).get('type')!r} is not BPE"
            )
        return load_bpe(directory, config, tokenizer)
    raise TokenizerError(f"{directory}: no tokenizer.json or tokenizer.model")
