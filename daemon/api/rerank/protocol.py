"""Rerank request body: a query, documents as strings or `{text}` objects, top_n."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from daemon.api.fields import ProtocolModel

# Cohere's and Jina's cap on documents per request; each pair must also fit the model's context.
MAX_DOCUMENTS = 1000


class RerankDocument(ProtocolModel):
    """A document given as an object (Cohere/Jina `{"text": ...}`)."""

    text: str


class RerankRequest(ProtocolModel):
    """POST /v1/rerank."""

    model: str | None = None
    query: Annotated[str, Field(min_length=1)]
    documents: Annotated[list[str | RerankDocument], Field(min_length=1, max_length=MAX_DOCUMENTS)]
    top_n: Annotated[int, Field(ge=1)] | None = None
    return_documents: bool = False

    def texts(self) -> list[str]:
        """Every document as plain text, in request order."""
        return [d if isinstance(d, str) else d.text for d in self.documents]
