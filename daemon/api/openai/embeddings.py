"""OpenAI embeddings: the request body and its translation to the engine's Embedder and back."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field

from daemon.api.fields import ProtocolModel
from daemon.core.watch import leased
from daemon.engine.embed.embeddings import Embedder, truncate
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import InvalidRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request

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
            return [_tokenize(lm, x)]
        if all(isinstance(t, int) for t in x):
            return [list(x)]  # type: ignore[arg-type]
        if all(isinstance(t, str) for t in x):
            return [_tokenize(lm, t) for t in x]  # type: ignore[arg-type]
        return [list(t) for t in x]  # type: ignore[union-attr]


def _tokenize(lm: LoadedModel, text: str) -> list[int]:
    # The text is data: "[CLS]" typed by a user stays text, while the model's own
    # special tokens ([CLS] ... [SEP], BOS/EOS) are added as it was trained with.
    return lm.model.tokenize(text, add_special=True, parse_special=False)


def _embedder(lm: LoadedModel) -> Embedder:
    if lm.embedder is None:
        raise InvalidRequest(
            f"model `{lm.name}` has no embedding support (its GGUF declares no pooling)",
            param="model",
            code="model_not_supported",
        )
    return lm.embedder


def _encode(vec: np.ndarray, encoding_format: str) -> list[float] | str:
    if encoding_format == "base64":
        # OpenAI's base64 form: the little-endian float32 bytes of the vector.
        return base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii")
    return vec.astype(np.float32).tolist()  # type: ignore[no-any-return]


async def create_embeddings(registry: ModelRegistry, req: EmbeddingRequest) -> dict[str, Any]:
    """POST /v1/embeddings: one vector per input, in input order."""
    lm = await leased(registry, req.model)
    embedder = _embedder(lm)
    if req.dimensions is not None and req.dimensions > embedder.n_embd:
        raise InvalidRequest(
            f"dimensions must be at most {embedder.n_embd} for `{lm.name}`", param="dimensions"
        )
    inputs = req.token_inputs(lm)
    vectors = await embedder.embed(inputs)
    n_tokens = sum(len(t) for t in inputs)
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": _encode(truncate(v, req.dimensions), req.encoding_format),
        }
        for i, v in enumerate(vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": registry.answering_name(req.model, lm.name),
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
