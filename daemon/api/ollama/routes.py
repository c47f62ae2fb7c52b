"""Routes of Ollama's API under /api (its /api/generate shares the seed's route: dispatch.py)."""

from __future__ import annotations

from typing import Any

from litestar import Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Response

from daemon.api.auth import ADMIN, Caller
from daemon.api.framing import NdjsonStream, ndjson
from daemon.api.ollama import catalog, errors, serving
from daemon.api.ollama.protocol import (
    ChatRequest,
    CopyRequest,
    EmbeddingsRequest,
    EmbedRequest,
    ModelRef,
    PullRequest,
)
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry
from daemon.version import edged_version

Body = dict[str, Any]


@post("/chat", status_code=200)
async def chat(
    data: JSONBody[ChatRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Body | NdjsonStream:
    """Chat; NDJSON chunks unless `stream` is false."""
    return await serving.chat(registry, data, policy_of(settings))


@post("/embed", status_code=200)
async def embed(data: JSONBody[EmbedRequest], registry: NamedDependency[ModelRegistry]) -> Body:
    """Embedding vectors of one or more inputs."""
    return await serving.embed(registry, data)


@post("/embeddings", status_code=200)
async def embeddings(
    data: JSONBody[EmbeddingsRequest], registry: NamedDependency[ModelRegistry]
) -> Body:
    """The legacy one-prompt embedding."""
    return await serving.embeddings(registry, data)


@get("/tags")
async def tags(registry: NamedDependency[ModelRegistry]) -> Body:
    """Every servable model."""
    return catalog.tags(registry)


@post("/show", status_code=200)
async def show(
    data: JSONBody[ModelRef],
    registry: NamedDependency[ModelRegistry],
    caller: NamedDependency[Caller],
) -> Body:
    """One model's template, details, metadata and capabilities (its path to admins only)."""
    return catalog.show(registry, data, full_paths=caller.admin)


@get("/ps")
async def ps(registry: NamedDependency[ModelRegistry]) -> Body:
    """The loaded models."""
    return catalog.ps(registry)


@get("/version")
async def version() -> Body:
    """The Ollama API level served (and edged's own version)."""
    return {"version": catalog.OLLAMA_API_VERSION, "edged": edged_version()}


@post("/pull", status_code=200, opt={"scope": ADMIN})
async def pull(
    data: JSONBody[PullRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Body | NdjsonStream:
    """Fetch (and convert, quantize) a hub model into the models directory."""
    if not data.stream:
        return await catalog.pull(registry, settings, data)
    plan = catalog.pull_plan(settings, data, registry)
    return ndjson(catalog.pull_events(registry, plan), [], errors.SHAPE.wire)


@delete("/delete", status_code=200, opt={"scope": ADMIN})
async def delete_model(
    data: JSONBody[ModelRef],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Response[bytes]:
    """Unload a model and remove its file."""
    await catalog.delete(registry, settings, data)
    return Response(b"", status_code=200, media_type="text/plain")


@post("/copy", status_code=200, opt={"scope": ADMIN})
async def copy_model(
    data: JSONBody[CopyRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Response[bytes]:
    """A model under a second name."""
    await catalog.copy(registry, settings, data)
    return Response(b"", status_code=200, media_type="text/plain")


router = Router(
    path="/api",
    route_handlers=[
        chat,
        embed,
        embeddings,
        tags,
        show,
        ps,
        version,
        pull,
        delete_model,
        copy_model,
    ],
    exception_handlers=errors.SHAPE.handlers(),
)
