"""A reranker's input: one query/document pair laid out as llama-server lays it out."""

from __future__ import annotations

from daemon.engine.native.llama import Model

NO_TOKEN = -1  # LLAMA_TOKEN_NULL


def pair_tokens(model: Model, query: str, document: str) -> list[int]:
    """Tokens of one pair, as llama.cpp's server `format_prompt_rerank` builds them.

    A GGUF with a "rerank" template gets it filled in ({query}, {document}) with special
    tokens parsed; otherwise [BOS] query [EOS] [SEP] document [EOS], each marker present
    only where the vocabulary asks for it (BERT: [CLS] query [SEP] document [SEP]).
    Query and document are data: a literal "[SEP]" in them stays text.
    """
    template = model.named_template("rerank")
    if template is not None:
        prompt = template.replace("{query}", query).replace("{document}", document)
        return model.tokenize(prompt, add_special=False, parse_special=True)
    q = model.tokenize(query, add_special=False, parse_special=False)
    d = model.tokenize(document, add_special=False, parse_special=False)
    eos = model.eos if model.eos != NO_TOKEN else model.sep
    out: list[int] = []
    if model.add_bos:
        out.append(model.bos)
    out += q
    if model.add_eos:
        out.append(eos)
    if model.add_sep:
        out.append(model.sep)
    out += d
    if model.add_eos:
        out.append(eos)
    return out
