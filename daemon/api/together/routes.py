"""Route of the Together-style legacy dialect."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from daemon.api.together import serving
from daemon.api.together.protocol import InferenceRequest
from daemon.config import Settings
from daemon.core.choices import policy_of
from daemon.engine.loading.registry import ModelRegistry


@post("/inference", status_code=200)
async def inference(
    data: JSONBody[InferenceRequest],
    request: Request[Any, Any, Any],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> dict[str, Any]:
    """Complete a prompt; the request is echoed back under `args` as the client sent it."""
    args = await request.json()
    return await serving.inference(registry, data, args, policy_of(settings))
