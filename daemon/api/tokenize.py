"""`/tokenize` and `/detokenize` (also under `/v1`), as llama.cpp's server offers them."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from daemon.api.fields import ProtocolModel
from daemon.core.watch import leased
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import InvalidRequest


class TokenizeRequest(ProtocolModel):
    """Text to token ids with a model's vocabulary."""

    model: str | None = None
    content: str
    add_special: bool = False
    parse_special: bool = True
    with_pieces: bool = False


class DetokenizeRequest(ProtocolModel):
    """Token ids back to text."""

    model: str | None = None
    tokens: list[int]
    special: bool = True


@post(["/tokenize", "/v1/tokenize"], status_code=200)
async def tokenize(
    data: JSONBody[TokenizeRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """`{content, add_special?, parse_special?, with_pieces?}` → `{tokens}`.

    With `with_pieces`, each token is `{id, piece}` as llama-server gives it: the piece as text,
    or as its byte values when it is not valid UTF-8 on its own.
    """
    lm = await leased(registry, data.model)
    # Off the event loop: a body of megabytes takes a while to tokenize.
    tokens = await asyncio.to_thread(
        lm.model.tokenize,
        data.content,
        add_special=data.add_special,
        parse_special=data.parse_special,
    )
    if data.with_pieces:
        return {"model": lm.name, "tokens": [{"id": t, "piece": _piece(lm, t)} for t in tokens]}
    return {"model": lm.name, "tokens": tokens}


def _piece(lm: LoadedModel, token: int) -> str | list[int]:
    raw = lm.model.special_piece(token)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return list(raw)


@post(["/detokenize", "/v1/detokenize"], status_code=200)
async def detokenize(
    data: JSONBody[DetokenizeRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """`{tokens, special?}` → `{content}`; `special` renders control tokens as their text."""
    lm = await leased(registry, data.model)
    n_vocab = lm.model.n_vocab
    if any(not 0 <= t < n_vocab for t in data.tokens):
        raise InvalidRequest(f"token ids must be in [0, {n_vocab})", param="tokens")
    content = lm.model.detokenize(data.tokens, special=data.special)
    return {"model": lm.name, "content": content}


handlers = [tokenize, detokenize]
