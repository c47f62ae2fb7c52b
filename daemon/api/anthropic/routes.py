"""Routes of the Anthropic Messages dialect (`x-api-key` and `anthropic-version` accepted)."""

from __future__ import annotations

from typing import Any

from litestar import Router, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import ServerSentEvent

from daemon.api.anthropic import serving
from daemon.api.anthropic.errors import SHAPE
from daemon.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry


@post("/messages", status_code=200)
async def messages(
    data: JSONBody[MessagesRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any] | ServerSentEvent:
    """A message; Anthropic's named SSE events when `stream` is true."""
    return await serving.create_message(registry, data, policy_of(settings))


@post("/messages/count_tokens", status_code=200)
async def count_tokens(
    data: JSONBody[CountTokensRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any]:
    """Tokens the conversation (system, tools, messages) takes in the model's prompt."""
    return await serving.count_tokens(registry, data, policy_of(settings))


router = Router(
    path="/v1",
    route_handlers=[messages, count_tokens],
    exception_handlers=SHAPE.handlers(),
)
