"""Operational routes: health."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.di import NamedDependency

from daemon.api.auth import PUBLIC, Caller
from daemon.engine.loading.registry import ModelRegistry
from daemon.rpc.cluster import RpcCluster


@get("/health", sync_to_thread=False, opt={"scope": PUBLIC})
def health(
    registry: NamedDependency[ModelRegistry],
    rpc: NamedDependency[RpcCluster | None],
    caller: NamedDependency[Caller],
) -> Response[dict[str, Any]]:
    """200 once the default model is loaded and its scheduler runs (and every RPC worker
    answers); 503 before. Without a valid key (when keys are set) only the status shows:
    load balancers need no more, and model names, slots and queues are for key holders."""
    loaded = [
        {
            "name": lm.name,
            # The file name only: absolute paths tell anyone who can reach /health about the
            # host's layout (user names, mount points).
            "file": lm.path.name,
            "ctx_size": lm.ctx_size,
            "slots": lm.worker.n_slots,
            "busy_slots": lm.worker.busy_slots,
            "queued": max(0, lm.worker.outstanding - lm.worker.busy_slots),
            "alive": lm.worker.alive,
        }
        for lm in registry.loaded()
    ]
    ready = registry.is_loaded(registry.default_name) and all(m["alive"] for m in loaded)
    body: dict[str, Any] = {
        "status": "ok" if ready else "loading",
        "default_model": registry.default_name,
        "models": loaded,
    }
    if rpc is not None:
        body["rpc_workers"] = rpc.snapshot()
        if not rpc.healthy():
            ready = False
            body["status"] = "degraded"
    if not caller.scopes:
        body = {"status": body["status"]}
    return Response(body, status_code=200 if ready else 503)
