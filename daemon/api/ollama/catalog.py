"""Ollama's model management: /api/tags, /api/show, /api/ps, /api/pull, /api/delete, /api/copy.

Models are GGUF files in the models directory, named by file stem, as everywhere in edged.
Facts about a file come from its GGUF header (read once per file version); the digest is the
sha256 the pull sidecar recorded, else a digest of the file's path, size and mtime (hashing a
multi-GB file on every listing would stall the listing).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from daemon import models
from daemon.api.ollama.protocol import CopyRequest, ModelRef, PullRequest
from daemon.api.ollama.serving import resolve_name
from daemon.config import Settings
from daemon.core.families import family_of
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelEntry, ModelRegistry
from daemon.engine.native import ggufmeta
from daemon.errors import InvalidRequest
from quantize.gguf_header import ArrayRef, file_type_name

# The Ollama API level these routes implement (clients gate features on /api/version).
OLLAMA_API_VERSION = "0.12.0"
DEFAULT_PULL_TYPE = models.DEFAULT_TYPE
# RFC 3339 stand-in for "never unloaded" in /api/ps.
NEVER = "9999-12-31T23:59:59Z"
_ENCODERS = ("bert", "nomic-bert", "jina-bert-v2", "t5encoder")

Body = dict[str, Any]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def header(path: Path) -> dict[str, Any]:
    """A GGUF's metadata (arrays as `ArrayRef`s, read by `model_info`) and its parameter
    count; empty when the file cannot be read."""
    try:
        h = ggufmeta.header(path)
    except (OSError, ValueError):
        return {}
    meta = dict(h.fields)
    meta["general.parameter_count"] = sum(t.n_elements for t in h.tensors)
    return meta


def model_info(path: Path, *, verbose: bool) -> dict[str, Any]:
    """/api/show's `model_info`: the header's keys; arrays (the vocabulary, merges) only when
    `verbose`, as Ollama sends them."""
    meta = header(path)
    scalars = {k: v for k, v in meta.items() if not isinstance(v, ArrayRef)}
    if not verbose or len(scalars) == len(meta):
        return scalars
    try:
        h = ggufmeta.header(path)
        return {k: h.array(k) if isinstance(v, ArrayRef) else v for k, v in meta.items()}
    except (OSError, ValueError):  # replaced or damaged since: what was read stands
        return scalars


def digest(path: Path) -> str:
    """The pulled file's sha256 from its sidecar, else a digest of its identity."""
    try:
        side = json.loads(path.with_suffix(".json").read_text())
        if isinstance(side.get("sha256"), str):
            return str(side["sha256"])
    except (OSError, ValueError, AttributeError):
        pass
    try:
        st = path.stat()
        ident = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        ident = str(path)
    return hashlib.sha256(ident.encode()).hexdigest()


def _size_label(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0", "")
    return str(n)


def details(meta: dict[str, Any]) -> Body:
    """Ollama's `details` object."""
    arch = str(meta.get("general.architecture", ""))
    size = meta.get("general.size_label") or _size_label(
        int(meta.get("general.parameter_count", 0))
    )
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": str(size),
        "quantization_level": file_type_name(meta.get("general.file_type")) or "",
    }


def capabilities(meta: dict[str, Any]) -> list[str]:
    """What a model can do, from its metadata."""
    arch = str(meta.get("general.architecture", ""))
    if f"{arch}.pooling_type" in meta or arch in _ENCODERS:
        return ["embedding"]
    caps = ["completion", "tools"]  # tools: through the template or edged's generic prompt
    if all(f"tokenizer.ggml.fim_{k}_token_id" in meta for k in ("pre", "suf", "mid")):
        caps.append("insert")
    return caps


def _senses(registry: ModelRegistry, e: ModelEntry) -> list[str]:
    """Ollama's "vision" and "audio" for what the model's projector takes."""
    senses = registry.senses_of(e)
    if senses is None:
        return []
    vision, audio = senses
    return ["vision"] * vision + ["audio"] * audio


def _entry_body(e: ModelEntry) -> Body:
    meta = header(e.path)
    try:
        st = e.path.stat()
        size, mtime = st.st_size, st.st_mtime
    except OSError:
        size, mtime = 0, 0.0
    return {
        "name": e.name,
        "model": e.name,
        "modified_at": _iso(mtime),
        "size": size,
        "digest": digest(e.path),
        "details": details(meta),
    }


def tags(registry: ModelRegistry) -> Body:
    """GET /api/tags: every servable name (files and aliases)."""
    return {"models": [_entry_body(e) for e in registry.entries()]}


def show(registry: ModelRegistry, req: ModelRef, *, full_paths: bool = False) -> Body:
    """POST /api/show: template, details, metadata and capabilities of one model.

    The Modelfile's FROM names the file; its absolute path only for `full_paths` (admins):
    a path tells about the host (user names, mount points)."""
    if req.ref is None:
        raise InvalidRequest("model is required", param="model")
    entry = registry.resolve(resolve_name(registry, req.ref))
    meta = header(entry.path)
    template = next(
        (lm.template.source for lm in registry.loaded() if lm.path == entry.path),
        meta.get("tokenizer.chat_template", ""),
    )
    return {
        "modelfile": f"FROM {entry.path if full_paths else entry.path.name}\n",
        "parameters": "",
        "template": template,
        # edged's own: the template's family, its call syntax and reasoning markers.
        "chat_family": family_of(template).wire(),
        "details": details(meta),
        "model_info": model_info(entry.path, verbose=bool(req.verbose)),
        "capabilities": capabilities(meta) + _senses(registry, entry),
        "modified_at": _entry_body(entry)["modified_at"],
    }


def _vram(lm: LoadedModel, size: int) -> int:
    """Bytes of a loaded model on GPUs: all of it offloaded, a share, or none."""
    off = lm.offload
    if not off.offloaded:
        return 0
    if off.layers < 0:
        return size
    return min(size, off.gpu_bytes) if off.gpu_bytes else size * off.offloaded // off.n_layers


def ps(registry: ModelRegistry) -> Body:
    """GET /api/ps: the models in memory, with when each is unloaded if left idle."""
    out = []
    for lm in registry.loaded():
        deadline = registry.unload_deadline(lm.name)
        size = lm.memory_bytes
        out.append(
            {
                "name": lm.name,
                "model": lm.name,
                "size": size,
                "digest": digest(lm.path),
                "details": details(header(lm.path)),
                "expires_at": NEVER if deadline is None else _iso(deadline),
                # The fit's estimate of device memory (all of it when every layer went).
                "size_vram": _vram(lm, size),
                "context_length": lm.ctx_size,
            }
        )
    return {"models": out}


def _models_dir(settings: Settings) -> Path:
    """The folder pull, copy and delete work in: the one the registry serves."""
    return settings.models_dir_or_default()


async def delete(registry: ModelRegistry, settings: Settings, req: ModelRef) -> None:
    """DELETE /api/delete: unload the model and remove its files (every split part, and the
    pull sidecar); 409 while requests use it (daemon/models)."""
    await models.delete(registry, _models_dir(settings), req.ref)


async def copy(registry: ModelRegistry, settings: Settings, req: CopyRequest) -> None:
    """POST /api/copy: a new file (hard link where possible) named `destination`.

    An existing name is a 409 rather than overwritten (Ollama overwrites): a loaded model's
    file is never replaced under it.
    """
    await models.copy(registry, _models_dir(settings), req.source, req.destination)


def pull_target(ref: str) -> tuple[str, str]:
    """`[hf.co/]owner/repo[:TYPE]` as (repo id, quantization type); `latest` is the default."""
    source = models.parse_source(ref)
    assert isinstance(source, models.HubSource)
    return source.repo, source.type


def pull_plan(settings: Settings, req: PullRequest, registry: ModelRegistry) -> models.PullPlan:
    """Source and destination of a pull, checked before anything streams (400, 409)."""
    if req.ref is None:
        raise InvalidRequest("model is required", param="model")
    source = models.parse_source(req.ref, import_dir=settings.import_dir)
    return models.plan_pull(source, _models_dir(settings), replace=req.replace, registry=registry)


async def pull_events(registry: ModelRegistry, plan: models.PullPlan) -> AsyncIterator[Body]:
    """Ollama's progress lines; the last is `success` (or the error line the stream adds)."""
    yield {"status": "pulling manifest"}
    task = asyncio.ensure_future(models.pull(registry, plan))
    status = f"pulling {plan.label}:{plan.source.type}"
    try:
        # Fetch, convert and quantize report no byte counts on the way; a heartbeat shows life.
        while not task.done():
            yield {"status": status}
            await asyncio.wait([task], timeout=1.0)
        path = task.result()
    finally:
        if not task.done():
            task.cancel()  # the worker thread finishes its file; only the wait is dropped
    size = path.stat().st_size
    sha = digest(path)
    yield {"status": status, "digest": f"sha256:{sha}", "total": size, "completed": size}
    yield {"status": "verifying sha256 digest"}
    yield {"status": "writing manifest"}
    yield {"status": "success", "model": plan.model}


async def pull(registry: ModelRegistry, settings: Settings, req: PullRequest) -> Body:
    """POST /api/pull with `stream: false`: the last status, once the file is in place."""
    last: Body = {}
    async for event in pull_events(registry, pull_plan(settings, req, registry)):
        last = event
    return last
