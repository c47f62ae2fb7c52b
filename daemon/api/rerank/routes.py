"""Rerank routes: the paths llama-server answers on, one handler."""

from __future__ import annotations

from typing import Any

from litestar import post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from daemon.api.rerank import serving
from daemon.api.rerank.protocol import RerankRequest
from daemon.engine.loading.registry import ModelRegistry


@post(["/v1/rerank", "/rerank", "/reranking", "/v1/reranking"], status_code=200)
async def rerank(
    data: JSONBody[RerankRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """`{query, documents, top_n?, return_documents?}` → results sorted by relevance."""
    return await serving.rerank(registry, data)


handlers = [rerank]
