"""Rerank serving: lay out query/document pairs, score them in the reranker's batch, sort."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from daemon.api.rerank.protocol import RerankRequest
from daemon.core.watch import leased
from daemon.engine.embed.embeddings import Embedder
from daemon.engine.embed.rerank import pair_tokens
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import InvalidRequest


def _ranker(lm: LoadedModel) -> Embedder:
    if lm.ranker is None:
        kind = "an embedding model" if lm.embedder is not None else "a generation model"
        raise InvalidRequest(
            f"model `{lm.name}` is {kind}, not a reranker (its GGUF declares no rank pooling)",
            param="model",
            code="model_not_supported",
        )
    return lm.ranker


async def rerank(registry: ModelRegistry, req: RerankRequest) -> dict[str, Any]:
    """Scores of every document against the query, best first, cut to top_n."""
    lm = await leased(registry, req.model)
    ranker = _ranker(lm)
    texts = req.texts()
    # Off the event loop: a thousand long documents take a while to tokenize.
    pairs = await asyncio.to_thread(lambda: [pair_tokens(lm.model, req.query, t) for t in texts])
    scores = await ranker.score(pairs)
    # Stable: equal scores keep request order.
    order = sorted(range(len(scores)), key=lambda i: -scores[i])[: req.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": scores[i]}
        if req.return_documents:
            item["document"] = {"text": texts[i]}
        results.append(item)
    n_tokens = sum(len(p) for p in pairs)
    return {
        "id": f"rerank-{uuid.uuid4().hex}",
        "object": "list",
        "model": req.model or lm.name,
        "results": results,
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
    }
