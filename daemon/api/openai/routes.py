"""Routes of the OpenAI-compatible dialect."""

from __future__ import annotations

from typing import Any

from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import ServerSentEvent

from daemon.api.openai import completions as text_completions
from daemon.api.openai import serving
from daemon.api.openai.embeddings import EmbeddingRequest, create_embeddings
from daemon.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelEntry, ModelRegistry
from daemon.errors import ModelNotFound


@post("/chat/completions", status_code=200)
async def chat_completions(
    data: JSONBody[ChatCompletionRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any] | ServerSentEvent:
    """Chat completion, streamed as SSE when `stream` is true."""
    return await serving.chat_completion(registry, data, policy_of(settings))


@post("/chat/completions/input_tokens", status_code=200)
async def chat_input_tokens(
    data: JSONBody[ChatCompletionRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any]:
    """How many tokens the chat's prompt is, nothing generated (llama-server's route)."""
    return await serving.chat_input_tokens(registry, data, policy_of(settings))


@post("/completions", status_code=200)
async def completions(
    data: JSONBody[CompletionRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any] | ServerSentEvent:
    """Text completion, streamed as SSE when `stream` is true."""
    return await text_completions.completion(registry, data, policy_of(settings))


@post("/embeddings", status_code=200)
async def embeddings(
    data: JSONBody[EmbeddingRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """Embedding vectors of one or more inputs."""
    return await create_embeddings(registry, data)


def _model_object(e: ModelEntry, registry: ModelRegistry) -> dict[str, Any]:
    # llama-server's word for a model with a projector (it lists `multimodal` among its
    # capabilities), and edged's own `modalities` as /props words them; a text model's
    # object stays OpenAI's own.
    proj = registry.senses_of(e)
    senses: dict[str, Any] = {}
    if proj is not None:
        vision, audio = proj
        senses = {
            "capabilities": ["completion", "multimodal"],
            "modalities": {"vision": vision, "audio": audio},
        }
    return {
        "id": e.name,
        "object": "model",
        "created": int(e.path.stat().st_mtime) if e.path.exists() else 0,
        "owned_by": "edged",
        **({"alias_of": e.alias_of} if e.alias_of else {}),
        **senses,
    }


@get("/models")
async def list_models(registry: NamedDependency[ModelRegistry]) -> dict[str, Any]:
    """Every servable model and alias."""
    return {"object": "list", "data": [_model_object(e, registry) for e in registry.entries()]}


@get("/models/{model_id:path}")
async def retrieve_model(
    model_id: FromPath[str], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """One servable model by name (ids may hold slashes); 404 for a name that is not served."""
    name = model_id.lstrip("/")
    if not registry.knows(name):
        raise ModelNotFound(f"The model `{name}` does not exist", param="model")
    return _model_object(registry.resolve(name), registry)


_HANDLERS = [
    chat_completions,
    chat_input_tokens,
    completions,
    embeddings,
    list_models,
    retrieve_model,
]
router = Router(path="/v1", route_handlers=_HANDLERS)
# DeepInfra's base URL (seed 003's curl): its requests work with only the host changed.
deepinfra_router = Router(path="/v1/openai", route_handlers=_HANDLERS)
# llama-server also serves these routes at the root: the same handlers, a second path.
unversioned = Router(
    path="/",
    route_handlers=[chat_completions, chat_input_tokens, completions, embeddings, list_models],
)
