"""The Litestar application: routes, dependencies, lifespan and error handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.di import Provide

from daemon.api.errors import exception_handlers
from daemon.api.openai.routes import router as openai_router
from daemon.api.ops import health
from daemon.config import Settings
from daemon.engine.llama import ModelOptions
from daemon.engine.loaded import EngineOptions
from daemon.engine.registry import ModelRegistry

log = logging.getLogger("edged")


def engine_options(settings: Settings) -> EngineOptions:
    """Map the daemon settings onto the engine's options."""
    return EngineOptions(
        ctx_size=settings.ctx_size,
        parallel=settings.parallel,
        threads=settings.threads,
        threads_batch=settings.threads_batch,
        batch_size=settings.batch_size,
        ubatch_size=settings.ubatch_size,
        flash_attn=settings.flash_attn,
        max_queue=settings.max_queue,
        model=ModelOptions(
            n_gpu_layers=settings.n_gpu_layers,
            main_gpu=settings.main_gpu,
            tensor_split=tuple(settings.tensor_split) if settings.tensor_split else None,
            extra_buffers=settings.extra_buffers,
        ),
    )


def build_registry(settings: Settings) -> ModelRegistry:
    """The model registry described by the settings."""
    return ModelRegistry(
        settings.default_model_path(),
        engine_options(settings),
        models_dir=settings.models_dir,
        aliases=settings.aliases,
    )


def create_app(settings: Settings, registry: ModelRegistry | None = None) -> Litestar:
    """Build the app; the default model loads in the background after start-up."""
    reg = registry if registry is not None else build_registry(settings)

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async def load_default() -> None:
            try:
                await reg.get(None)
                log.info("default model %s is ready", reg.default_name)
            except Exception:
                log.exception("loading the default model failed")

        task = asyncio.create_task(load_default())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(reg.close)

    return Litestar(
        route_handlers=[health, openai_router],
        dependencies={"registry": Provide(lambda: reg, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )
