"""The Litestar application: routes, dependencies, lifespan and error handlers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide

from daemon.api import resumable, tokenize, webui
from daemon.api.admin import router as admin_router
from daemon.api.anthropic.routes import router as anthropic_router
from daemon.api.auth import (
    EVERY_SCOPE,
    INFERENCE,
    ApiKeys,
    api_key_guard,
    is_loopback,
    load_api_keys,
    provide_api_key,
    provide_caller,
)
from daemon.api.dispatch import router as generate_path_router
from daemon.api.errors import OPENAI
from daemon.api.generate.routes import router as generate_router
from daemon.api.llamacpp.routes import router as llamacpp_router
from daemon.api.metrics import Metrics
from daemon.api.middleware import ServiceMiddleware
from daemon.api.ollama.routes import router as ollama_router
from daemon.api.openai.routes import deepinfra_router
from daemon.api.openai.routes import router as openai_router
from daemon.api.openai.routes import unversioned as unversioned_openai_router
from daemon.api.ops import health
from daemon.api.rerank.routes import handlers as rerank_handlers
from daemon.api.responses.routes import router as responses_router
from daemon.api.together.routes import inference as together_inference
from daemon.config import Settings, builtin_specs, model_specs
from daemon.engine.adapters.lora import AdapterSpec
from daemon.engine.loading.options import EngineOptions
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.native.llama import ModelOptions
from daemon.rpc.cluster import RpcCluster
from daemon.rpc.metrics import RpcCollector
from daemon.service.state import ServiceState

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
        exact=settings.exact,
        # Unset: on, except for generation under --exact (None: on for encoders only).
        flash_attn=settings.flash_attn
        if settings.flash_attn is not None or settings.exact
        else True,
        cache_type_k=settings.cache_type_k,
        cache_type_v=settings.cache_type_v,
        max_queue=settings.max_queue,
        store_max_bytes=settings.store_max_bytes,
        store_dir=settings.store_dir,
        store_key_max_bytes=(
            settings.store_key_max_bytes
            if settings.store_key_max_bytes is not None
            else settings.store_max_bytes // 4
        ),
        store_ttl=settings.store_ttl,
        max_per_key=settings.max_concurrency_per_key,
        speculate=bool(settings.speculate),  # unset: off (daemon/config.py says why)
        draft_model=settings.draft_model,
        draft_max=settings.draft_max,
        cache_ram=settings.cache_ram,
        cache_dir=settings.cache_dir,
        cache_dir_max_bytes=settings.cache_dir_max_bytes,
        cache_share_tokens=settings.cache_share_tokens,
        # Slots x context may shrink to fit a GPU only where the operator set neither.
        fit_kv=not {"ctx_size", "parallel"} & settings.model_fields_set,
        model=ModelOptions(
            # With RPC workers every layer goes to a device unless told otherwise.
            n_gpu_layers=_gpu_layers(settings),
            main_gpu=settings.main_gpu,
            tensor_split=tuple(settings.tensor_split) if settings.tensor_split else None,
            extra_buffers=settings.extra_buffers,
            use_mmap=settings.mmap,
        ),
    )


def _gpu_layers(settings: Settings) -> int | None:
    """Layers to offload: None fits them at each load (`auto`); with RPC workers every layer
    goes to a device unless told otherwise."""
    if settings.n_gpu_layers == "auto":
        return -1 if settings.rpc else None
    return int(settings.n_gpu_layers)


def build_registry(settings: Settings) -> ModelRegistry:
    """The model registry described by the settings."""
    return ModelRegistry(
        settings.default_model_path(),
        engine_options(settings),
        models_dir=settings.models_dir_or_default(),
        aliases=settings.aliases,
        keep_alive=settings.keep_alive,
        max_loaded=settings.max_loaded_models,
        max_memory=settings.max_models_memory,
        strict_names=settings.strict_model_names,
        adapters=tuple(AdapterSpec.parse(spec) for spec in settings.lora),
        projectors=model_specs(settings.mmproj, "--mmproj"),
        templates=model_specs(settings.chat_template_file, "--chat-template-file"),
        builtin_templates=builtin_specs(settings.chat_template),
    )


async def _reap_forever(reg: ModelRegistry) -> None:
    """Unload models whose keep-alive ran out, checked every second."""
    while True:
        await asyncio.sleep(1.0)
        try:
            await reg.reap()
        except Exception:  # keep reaping; one failed unload must not stop the loop
            log.exception("unloading an idle model failed")


def api_keys(settings: Settings) -> ApiKeys:
    """The configured keys; with none, a loopback daemon's single user holds every scope and
    a wider bind (--insecure-no-auth) allows inference only."""
    open_scopes = EVERY_SCOPE if is_loopback(settings.host) else frozenset({INFERENCE})
    return ApiKeys(load_api_keys(settings), open_scopes)


def create_app(
    settings: Settings,
    registry: ModelRegistry | None = None,
    state: ServiceState | None = None,
    keys: ApiKeys | None = None,
) -> Litestar:
    """Build the app; the default model loads in the background after start-up.

    `keys` may be shared with the service runner, which replaces its content on SIGHUP.
    """
    reg = registry if registry is not None else build_registry(settings)
    service = state if state is not None else ServiceState()
    metrics = Metrics(reg, lambda: service.draining)
    # Public routes say so themselves (opt scope "public": /health, the chat page's files);
    # /metrics only when the operator opens it.
    public = frozenset({"/metrics"} if settings.metrics_public else ())
    guard = api_key_guard(keys if keys is not None else api_keys(settings), public)
    middleware = ServiceMiddleware(
        service, metrics, request_timeout=settings.request_timeout, log_json=settings.log_json
    )
    cors = CORSConfig(allow_origins=settings.cors_origins) if settings.cors_origins else None
    streams = resumable.StreamStore(service.records)
    rpc = RpcCluster(settings.rpc, reg) if settings.rpc else None
    if rpc is not None:
        reg.before_load = rpc.before_load
        metrics.registry.register(RpcCollector(rpc))

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async def load_default() -> None:
            try:
                await reg.get(None)
                log.info("default model %s is ready", reg.default_name)
            except Exception:
                log.exception("loading the default model failed")

        if rpc is not None:
            rpc.start(asyncio.get_running_loop())
        task = asyncio.create_task(load_default())
        reaper = asyncio.create_task(_reap_forever(reg))
        watcher = asyncio.create_task(rpc.watch()) if rpc is not None else None
        try:
            yield
        finally:
            task.cancel()
            reaper.cancel()
            if watcher is not None:
                watcher.cancel()
            await streams.close()
            await asyncio.to_thread(_persist_and_close, reg)

    return Litestar(
        route_handlers=[
            health,
            openai_router,
            deepinfra_router,
            anthropic_router,
            responses_router(),
            together_inference,
            generate_path_router,
            generate_router,
            ollama_router,
            llamacpp_router,
            unversioned_openai_router,
            *tokenize.handlers,
            resumable.router,
            *rerank_handlers,
            metrics.route(),
            admin_router,
            *webui.handlers,
        ],
        dependencies={
            "registry": Provide(lambda: reg, sync_to_thread=False),
            "api_key": Provide(provide_api_key, sync_to_thread=False),
            "caller": Provide(provide_caller, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "rpc": Provide(lambda: rpc, sync_to_thread=False),
            "streams": Provide(lambda: streams, sync_to_thread=False),
        },
        state=State({"streams": streams}),
        guards=[guard],
        middleware=[middleware],
        cors_config=cors,
        exception_handlers=OPENAI.handlers(),
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        debug=False,
        logging_config=None,
    )


def _persist_and_close(reg: ModelRegistry) -> None:
    """Shutdown: unload (running generations save their state first), then save what
    survives a restart (the request_id stores)."""
    try:
        reg.close()
    finally:
        try:
            reg.persist()
        except Exception:  # logged: nothing more can be done at exit
            log.exception("saving state before shutdown failed")
