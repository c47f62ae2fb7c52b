"""Routes of the request_id-keyed generate dialect."""

from __future__ import annotations

from typing import Any

from litestar import Router, delete, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from daemon.api.generate import serving
from daemon.api.generate.errors import SHAPE
from daemon.api.generate.protocol import GenerateBatchRequest
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry


def owner_of(api_key: NamedDependency[str | None]) -> str:
    """Store entries belong to the caller's key identity ('' when auth is off)."""
    return api_key or ""


@post("/generate-batch", status_code=200)
async def generate_batch(
    data: JSONBody[GenerateBatchRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    api_key: NamedDependency[str | None],
) -> list[dict[str, Any]]:
    """Several request_ids decoded together; the answers in request order."""
    return await serving.generate_batch(
        registry, data, owner_of(api_key), settings.generation, policy_of(settings)
    )


@delete("/generate/{request_id:str}", status_code=204)
async def forget(
    request_id: FromPath[str],
    registry: NamedDependency[ModelRegistry],
    api_key: NamedDependency[str | None],
) -> None:
    """Drop the caller's kept generation under `request_id` (404 if it has none)."""
    await serving.forget(registry, owner_of(api_key), request_id)


router = Router(
    path="/api", route_handlers=[generate_batch, forget], exception_handlers=SHAPE.handlers()
)
