"""OpenAI embeddings: the request body and its translation to the engine's Embedder and back."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from daemon.api.fields import ProtocolModel
from daemon.core.embeddings import MAX_INPUTS, embed, embedder_of, text_tokens
from daemon.core.watch import leased
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry

Text = Annotated[str, Field(min_length=1)]
Tokens = Annotated[list[int], Field(min_length=1)]


class EmbeddingRequest(ProtocolModel):
    """POST /v1/embeddings."""

    model: str | None = None
    input: (
        Text
        | Annotated[list[Text], Field(min_length=1, max_length=MAX_INPUTS)]
        | Tokens
        | Annotated[list[Tokens], Field(min_length=1, max_length=MAX_INPUTS)]
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None

    def token_inputs(self, lm: LoadedModel) -> list[list[int]]:
        """Every input as token ids; token arrays are taken as given, specials included."""
        x = self.input
        if isinstance(x, str):
            return [text_tokens(lm, x)]
        if all(isinstance(t, int) for t in x):
            return [list(x)]  # type: ignore[arg-type]
        if all(isinstance(t, str) for t in x):
            return [text_tokens(lm, t) for t in x]  # type: ignore[arg-type]
        return [list(t) for t in x]  # type: ignore[union-attr]


def _encode(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of the vector.
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()  # type: ignore[no-any-return]


async def create_embeddings(registry: ModelRegistry, req: EmbeddingRequest) -> dict[str, Any]:
    """POST /v1/embeddings: one vector per input, in input order."""
    lm = await leased(registry, req.model)
    embedder_of(lm)  # a 400 for a model without pooling, before any input is tokenized
    inputs = req.token_inputs(lm)
    vectors = await embed(lm, inputs, req.dimensions)
    n_tokens = sum(len(t) for t in inputs)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode(v, req.encoding_format),
        }
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": registry.answering_name(req.model, lm.name),
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
