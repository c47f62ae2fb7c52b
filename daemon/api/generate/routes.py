"""Routes of the request_id-keyed generate dialect."""

from __future__ import annotations

from typing import Any

from litestar import Request, Router, delete, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from daemon.api import dispatch
from daemon.api.generate import serving
from daemon.api.generate.protocol import GenerateBatchRequest, GenerateRequest
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry


def _owner(api_key: NamedDependency[str | None]) -> str:
    """Store entries belong to the caller's key identity ('' when auth is off)."""
    return api_key or ""


@post("/generate", status_code=200, media_type="text/plain")
async def generate(
    request: Request[Any, Any, Any],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    api_key: NamedDependency[str | None],
) -> Any:
    """Generate or continue under `request_id`; plain chunked text when streaming.

    A body without request_id is Ollama's /api/generate (the rule: daemon/api/ollama/dispatch).
    """
    body = await dispatch.read_body(request)
    if dispatch.is_ollama(body):
        return await dispatch.ollama_generate(registry, body, policy_of(settings))
    data = dispatch.seed_body(GenerateRequest, body)
    return await serving.generate(
        registry, data, _owner(api_key), settings.generation, policy_of(settings)
    )


@post("/generate-batch", status_code=200)
async def generate_batch(
    data: JSONBody[GenerateBatchRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    api_key: NamedDependency[str | None],
) -> list[dict[str, Any]]:
    """Several request_ids decoded together; the answers in request order."""
    return await serving.generate_batch(
        registry, data, _owner(api_key), settings.generation, policy_of(settings)
    )


@delete("/generate/{request_id:str}", status_code=204)
async def forget(
    request_id: FromPath[str],
    registry: NamedDependency[ModelRegistry],
    api_key: NamedDependency[str | None],
) -> None:
    """Drop the caller's kept generation under `request_id` (404 if it has none)."""
    await serving.forget(registry, _owner(api_key), request_id)


router = Router(path="/api", route_handlers=[generate, generate_batch, forget])
