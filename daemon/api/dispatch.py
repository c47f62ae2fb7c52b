"""One path, two dialects: `POST /api/generate` is the seed's or Ollama's by its body.

The rule: a JSON object with `request_id`, or with any field only the seed's dialect has
(`only_new_tokens`, `stream_response`, `generation_config`), is the seed's request (and a
missing request_id is then the seed's own 400); any other body is Ollama's.
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, Router, post
from litestar.di import NamedDependency
from litestar.exceptions import ClientException, ValidationException
from pydantic import BaseModel, ValidationError

from daemon.api.errors import pydantic_error
from daemon.api.generate import serving as seed
from daemon.api.generate.errors import SHAPE
from daemon.api.generate.protocol import GenerateRequest as SeedRequest
from daemon.api.generate.routes import owner_of
from daemon.api.ollama import errors, serving
from daemon.api.ollama.protocol import GenerateRequest
from daemon.config import Settings
from daemon.core.choices import Policy, policy_of
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import EdgedError

SEED_FIELDS = frozenset({"request_id", "only_new_tokens", "stream_response", "generation_config"})

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request[Any, Any, Any]) -> Any:
    """The JSON body; malformed JSON is a 400 (None for an empty body)."""
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ClientException(f"malformed JSON body: {exc}") from exc


def is_ollama(body: Any) -> bool:
    """Whether a /api/generate body speaks Ollama's dialect (see the module rule)."""
    return isinstance(body, dict) and not (SEED_FIELDS & body.keys())


def seed_body(model: type[M], body: Any) -> M:
    """Validate a seed body, failing exactly as Litestar's own body validation does."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        extra = [
            {"message": e["msg"], "key": ".".join(str(x) for x in e["loc"]), "source": "body"}
            for e in exc.errors()
        ]
        raise ValidationException("Validation failed", extra=extra) from exc


async def ollama_generate(registry: ModelRegistry, body: dict[str, Any], policy: Policy) -> Any:
    """Serve an Ollama /api/generate body; every failure in Ollama's shape."""
    try:
        try:
            req = GenerateRequest.model_validate(body)
        except ValidationError as exc:
            return errors.SHAPE.response(pydantic_error(exc))
        out = await serving.generate(registry, req, policy)
    except EdgedError as exc:
        return errors.SHAPE.response(exc)
    if isinstance(out, dict):
        return Response(out, status_code=200, media_type="application/json")
    return out


@post("/generate", status_code=200, media_type="text/plain")
async def generate(
    request: Request[Any, Any, Any],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
    api_key: NamedDependency[str | None],
) -> Any:
    """Generate or continue under `request_id`; plain chunked text when streaming.

    A body without request_id is Ollama's /api/generate (the rule above).
    """
    body = await read_body(request)
    if is_ollama(body):
        return await ollama_generate(registry, body, policy_of(settings))
    data = seed_body(SeedRequest, body)
    return await seed.generate(
        registry, data, owner_of(api_key), settings.generation, policy_of(settings)
    )


# The seed's errors are worded by its dialect; Ollama's bodies answer in Ollama's shape above.
router = Router(path="/api", route_handlers=[generate], exception_handlers=SHAPE.handlers())
