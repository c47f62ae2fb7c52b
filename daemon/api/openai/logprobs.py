"""Log-probabilities in the shapes OpenAI (chat, completions) and Together answer with."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daemon.engine.types import TokenLogprob

Piece = Callable[[int], bytes]


def _text(piece: Piece, token: int) -> str:
    return piece(token).decode("utf-8", "replace")


def chat_content(entries: Sequence[TokenLogprob], piece: Piece) -> dict[str, Any]:
    """OpenAI chat: `{"content": [{token, logprob, bytes, top_logprobs}]}`."""

    def one(token: int, logprob: float) -> dict[str, Any]:
        raw = piece(token)
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    return {
        "content": [
            {**one(e.token, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
            for e in entries
        ]
    }


def together(entries: Sequence[TokenLogprob], piece: Piece) -> dict[str, Any]:
    """Together (seed 001): `{"tokens": [...], "token_logprobs": [...]}`."""
    return {
        "tokens": [_text(piece, e.token) for e in entries],
        "token_logprobs": [e.logprob for e in entries],
    }


def completions(
    entries: Sequence[TokenLogprob | None],
    tokens: Sequence[int],
    piece: Piece,
    offset: int = 0,
) -> dict[str, Any]:
    """OpenAI completions: tokens, token_logprobs, top_logprobs, text_offset.

    `entries[i]` scores `tokens[i]`; None (the first echoed prompt token) has no score.
    """
    texts = [_text(piece, t) for t in tokens]
    offsets = []
    for t in texts:
        offsets.append(offset)
        offset += len(t)
    return {
        "tokens": texts,
        "token_logprobs": [e.logprob if e else None for e in entries],
        "top_logprobs": [{_text(piece, t): lp for t, lp in e.top} if e else None for e in entries],
        "text_offset": offsets,
    }
