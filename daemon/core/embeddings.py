"""Embedding inputs as vectors: the part every embeddings dialect shares."""

from __future__ import annotations

import numpy as np

from daemon.engine.embed.embeddings import Embedder, truncate
from daemon.engine.loading.loaded import LoadedModel
from daemon.errors import InvalidRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request, applied on every dialect


def text_tokens(lm: LoadedModel, text: str) -> list[int]:
    """A text input's tokens. The text is data: "[CLS]" typed by a user stays text, while
    the model's own special tokens ([CLS] ... [SEP], BOS/EOS) are added as it was trained."""
    return lm.model.tokenize(text, add_special=True, parse_special=False)


def embedder_of(lm: LoadedModel) -> Embedder:
    """The model's embedder; a 400 for a model without pooling."""
    if lm.embedder is None:
        raise InvalidRequest(
            f"model `{lm.name}` has no embedding support (its GGUF declares no pooling)",
            param="model",
            code="model_not_supported",
        )
    return lm.embedder


async def embed(
    lm: LoadedModel, inputs: list[list[int]], dimensions: int | None
) -> list[np.ndarray]:
    """One vector per input, in input order, cut to `dimensions` (renormalized) if asked."""
    embedder = embedder_of(lm)
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequest(f"at most {MAX_INPUTS} inputs per request", param="input")
    if dimensions is not None and dimensions > embedder.n_embd:
        raise InvalidRequest(
            f"dimensions must be at most {embedder.n_embd} for `{lm.name}`", param="dimensions"
        )
    vectors = await embedder.embed(inputs)
    return [truncate(v, dimensions) for v in vectors]
