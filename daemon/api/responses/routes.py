"""Routes of the OpenAI Responses dialect; stored responses belong to the caller's API key."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Router, delete, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.response import ServerSentEvent

from daemon.api.responses import serving
from daemon.api.responses.protocol import ResponsesRequest
from daemon.api.responses.store import ResponseStore
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry


def _owner(api_key: str | None) -> str:
    """Stored responses belong to the caller's key identity ('' when auth is off)."""
    return api_key or ""


@post("/responses", status_code=200)
async def create(
    data: JSONBody[ResponsesRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    api_key: NamedDependency[str | None],
    responses: NamedDependency[ResponseStore],
) -> dict[str, Any] | ServerSentEvent:
    """A response; the semantic SSE events when `stream` is true."""
    return await serving.create_response(
        registry, responses, data, _owner(api_key), policy_of(settings)
    )


@get("/responses/{response_id:str}")
async def retrieve(
    response_id: FromPath[str],
    api_key: NamedDependency[str | None],
    responses: NamedDependency[ResponseStore],
) -> dict[str, Any]:
    """A stored response."""
    return serving.retrieve(responses, _owner(api_key), response_id)


@delete("/responses/{response_id:str}", status_code=200)
async def remove(
    response_id: FromPath[str],
    registry: NamedDependency[ModelRegistry],
    api_key: NamedDependency[str | None],
    responses: NamedDependency[ResponseStore],
) -> dict[str, Any]:
    """Forget a stored response and its kept conversation state."""
    return serving.delete(registry, responses, _owner(api_key), response_id)


@get("/responses/{response_id:str}/input_items")
async def input_items(
    response_id: FromPath[str],
    api_key: NamedDependency[str | None],
    responses: NamedDependency[ResponseStore],
    order: FromQuery[Literal["asc", "desc"]] = "desc",
    limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    after: FromQuery[str | None] = None,
) -> dict[str, Any]:
    """The input items of a stored response."""
    return serving.input_items(responses, _owner(api_key), response_id, order, limit, after)


def router(store: ResponseStore | None = None) -> Router:
    """The /v1/responses routes over one response store (one per app), also at the root
    (`/responses`), where llama-server serves them too."""
    kept = store if store is not None else ResponseStore()
    handlers = [create, retrieve, remove, input_items]
    return Router(
        path="/",
        route_handlers=[
            Router(path="/v1", route_handlers=handlers),
            Router(path="/", route_handlers=handlers),
        ],
        dependencies={"responses": Provide(lambda: kept, sync_to_thread=False)},
    )
