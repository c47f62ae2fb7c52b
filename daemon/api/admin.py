"""Admin routes the `edged` CLI uses: what is loaded, load/unload a model, pull one.

They need a key with the `admin` scope (with no keys, a loopback daemon's user has it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from litestar import Router, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.response import Stream
from pydantic import Field

from daemon import models
from daemon.api.auth import ADMIN
from daemon.api.fields import ProtocolModel
from daemon.api.keepalive import KeepAlive, keep_alive_arg
from daemon.config import Settings
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import Conflict, EdgedError, ModelNotFound


class LoadRequest(ProtocolModel):
    """POST /admin/load and /admin/unload."""

    model: str = Field(min_length=1)
    keep_alive: KeepAlive = None


class PullRequest(ProtocolModel):
    """POST /admin/pull: `owner/name[:QUANT]` or `import:NAME[:QUANT]` (daemon/models/sources.py);
    `replace` overwrites a model of that name that came from another source."""

    model: str = Field(min_length=1, max_length=1000)
    revision: str | None = Field(None, max_length=1000)
    replace: bool = False


def _entry_key(registry: ModelRegistry, name: str) -> str:
    """The file-stem model a name stands for; 404 unless `name` itself is served."""
    if not registry.knows(name):
        raise ModelNotFound(f"The model `{name}` does not exist", param="model")
    entry = registry.resolve(name)
    return entry.alias_of or entry.name


@get("/ps", sync_to_thread=False)
def ps(registry: NamedDependency[ModelRegistry]) -> dict[str, Any]:
    """The loaded models: slots, memory and when each unloads if left idle."""
    now_mono, now = time.monotonic(), time.time()
    models = []
    for lm in registry.loaded():
        deadline = registry.idle_deadline(lm.name)
        models.append(
            {
                "name": lm.name,
                "path": str(lm.path),
                "default": lm.name == registry.default_name,
                "ctx_size": lm.ctx_size,
                "slots": lm.worker.n_slots,
                "busy_slots": lm.worker.busy_slots,
                "memory_bytes": lm.memory_bytes,
                # What --max-models-memory counts (system memory; GPUs are per device).
                "host_bytes": lm.host_bytes + lm.cache_bytes,
                # The GPU fit (n_gpu_layers auto): layers on GPUs, their estimated device
                # memory per device, and why.
                "gpu_layers": lm.offload.offloaded,
                "n_layers": lm.offload.n_layers,
                "gpu_bytes": lm.offload.gpu_bytes,
                "gpu_devices": lm.offload.per_device,
                "offload": lm.offload.reason,
                "decoding": lm.mode.as_dict(),
                "loaded_at": lm.loaded_at,
                # Wall-clock time of the unload if no request comes; null = stays loaded.
                "expires_at": None if deadline is None else now + (deadline - now_mono),
            }
        )
    return {"models": models}


@post("/load", status_code=200)
async def load(
    data: JSONBody[LoadRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """Load a model now (a no-op if loaded); `keep_alive` as on any request."""
    key = _entry_key(registry, data.model)
    lm = await registry.get(data.model, keep_alive_arg(data.model_fields_set, data.keep_alive))
    return {"model": key, "loaded": True, "memory_bytes": lm.memory_bytes}


@post("/unload", status_code=200)
async def unload(
    data: JSONBody[LoadRequest], registry: NamedDependency[ModelRegistry]
) -> dict[str, Any]:
    """Unload a model now unless requests use it (409: a model is never unloaded under its
    leases). The default model loads again on the next request that needs it."""
    key = _entry_key(registry, data.model)
    was = registry.is_loaded(key)
    lm = next((m for m in registry.loaded() if m.name == key), None)
    busy = max(registry.leases(key), lm.worker.outstanding if lm is not None else 0)
    if busy:
        raise Conflict(
            f"`{key}` is in use by {busy} request(s); unload it when it is idle", param="model"
        )
    await registry.unload(key)
    return {"model": key, "loaded": False, "was_loaded": was}


@post("/rescan", status_code=200, sync_to_thread=False)
def rescan(registry: NamedDependency[ModelRegistry]) -> dict[str, Any]:
    """Re-read the models directory (what SIGHUP does, aliases aside)."""
    registry.rescan()
    return {"models": [e.name for e in registry.entries()]}


def _cache_bytes(repo: str) -> int:
    """Bytes of repo's files in the hub cache so far (partial downloads included)."""
    from huggingface_hub import constants

    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo.replace("/", "--")) / "blobs"
    total = 0
    with contextlib.suppress(OSError):
        for p in folder.iterdir():
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


@post("/pull", status_code=200)
async def pull(
    data: JSONBody[PullRequest],
    registry: NamedDependency[ModelRegistry],
    settings: NamedDependency[Settings],
) -> Stream:
    """Pull into the models directory; progress streams as JSON lines (NDJSON), then rescan.

    Lines: {"status": "pulling", "completed": bytes-so-far}..., then {"status": "success",
    "model": name, "path": ...} or {"status": "error", "error": message}. A bad source is a
    400 and a name taken by another source a 409, before anything streams. The pull goes on
    if the client hangs up (downloads resume next time anyway).
    """
    source = models.parse_source(data.model, import_dir=settings.import_dir, revision=data.revision)
    plan = models.plan_pull(
        source, settings.models_dir_or_default(), replace=data.replace, registry=registry
    )
    repo = source.repo if isinstance(source, models.HubSource) else None

    async def lines() -> AsyncIterator[bytes]:
        job = asyncio.create_task(models.pull(registry, plan))
        yield _line({"status": "pulling", "model": data.model, "completed": 0})
        while not job.done():
            await asyncio.wait({job}, timeout=0.5)
            if not job.done():
                done = _cache_bytes(repo) if repo is not None else 0
                yield _line({"status": "pulling", "completed": done})
        try:
            path = job.result()
        except EdgedError as exc:
            yield _line({"status": "error", "error": exc.message})
            return
        yield _line({"status": "success", "model": plan.model, "path": str(path)})

    return Stream(lines(), media_type="application/x-ndjson")


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


# Every route here manages models: the admin scope only (daemon/api/auth.py).
router = Router(
    path="/admin", route_handlers=[ps, load, unload, pull, rescan], opt={"scope": ADMIN}
)
