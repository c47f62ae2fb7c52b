"""Model management, one set of rules for the admin routes, Ollama's routes and the CLI: pull
(from the hub or the import directory), copy, delete and unload, never under a model's leases.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.errors import (
    Conflict,
    EdgedError,
    InvalidRequest,
    ModelNotFound,
    NotFound,
    Unavailable,
)
from daemon.models import files
from daemon.models.sources import HubSource, LocalSource, Source

if TYPE_CHECKING:  # the CLI uses this module without loading the engine
    from daemon.engine.loading.registry import ModelEntry, ModelRegistry

log = logging.getLogger("edged.models")

# Pulls into one file name run one after the other (a second one sees the first's result).
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
# An absolute path inside an error message (never shown to a client).
_ABS_PATH = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:)?[/\\][^\s'\"`,;()]*|~[/\\][^\s'\"`,;()]*")


@dataclass(frozen=True)
class PullPlan:
    """A checked pull: its source, the folder and the model name it makes."""

    source: Source
    folder: Path
    replace: bool = False

    @property
    def model(self) -> str:
        """The served name of the result: `<name>.<TYPE>`."""
        return f"{self.source.name}.{self.source.type}"

    @property
    def label(self) -> str:
        """The source as the client named it (what messages and the sidecar show)."""
        return self.source.label


def plan_pull(
    source: Source, folder: Path, *, replace: bool = False, registry: ModelRegistry | None = None
) -> PullPlan:
    """Check a pull before it starts (so a refusal is an HTTP status, not a stream line):
    the name must not be the default model or an alias, nor a file from another source
    unless `replace`."""
    plan = PullPlan(source, folder, replace)
    if registry is not None:
        taken = registry.knows(plan.model) and files.main_file(folder, plan.model) is None
        if taken or plan.model == registry.default_name:
            raise Conflict(
                f"`{plan.model}` is the default model or an alias; it cannot be pulled over",
                param="model",
            )
    files.check_target(folder, plan.model, plan.label, replace)
    return plan


@contextmanager
def _target_lock(path: Path) -> Iterator[None]:
    with _locks_guard:
        lock = _locks.setdefault(str(path), threading.Lock())
    with lock:
        yield


def run_pull(
    plan: PullPlan,
    *,
    threads: int | None = None,
    progress: bool = False,
    endpoint: str | None = None,
) -> Path:
    """Pull (blocking) and return the model's main file; errors as edged's own exceptions
    whose messages name only the source as the client gave it.

    An existing file is replaced atomically (`os.replace`): requests already holding the
    loaded model finish on the old file it mapped, new requests get a load of the new one
    (the registry notices the replaced file). Files of the old model that the new one does
    not have (split parts) are removed afterwards.
    """
    source = plan.source
    if isinstance(source, LocalSource) and source.path.is_file():
        # One .gguf file: pulled from a folder holding only a link to it (a pull lists a
        # folder, and must not pick up the file's neighbours).
        plan.folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".import-", dir=plan.folder) as tmp:
            (Path(tmp) / source.path.name).symlink_to(source.path)
            alone = LocalSource(Path(tmp), source.type, source.label, source.name)
            return _pull_locked(PullPlan(alone, plan.folder, plan.replace), threads, progress)
    return _pull_locked(plan, threads, progress, endpoint)


def _pull_locked(
    plan: PullPlan, threads: int | None, progress: bool, endpoint: str | None = None
) -> Path:
    from quantize.pull import pull

    folder = plan.folder
    with _target_lock(folder / plan.model):
        files.check_target(folder, plan.model, plan.label, plan.replace)
        before = set(files.model_files(folder, plan.model))
        source = plan.source
        try:
            target = pull(
                source.label,
                source.type,
                folder,
                source.revision if isinstance(source, HubSource) else None,
                threads,
                endpoint,
                progress,
                local_dir=source.path if isinstance(source, LocalSource) else None,
                name=source.name,
                before_write=lambda _: files.check_target(
                    folder, plan.model, plan.label, plan.replace
                ),
            )
        except EdgedError:
            raise
        except Exception as exc:
            raise _pull_error(plan, exc) from exc
        for stale in before - files.new_files(target):
            stale.unlink(missing_ok=True)
    return target


def _redact(text: str) -> str:
    return _ABS_PATH.sub("<path>", text.strip().splitlines()[0] if text.strip() else "")


def _hub_status(exc: BaseException) -> int | None:
    cause: BaseException | None = exc
    while cause is not None:
        response = getattr(cause, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        cause = cause.__cause__
    return None


def _pull_error(plan: PullPlan, exc: Exception) -> EdgedError:
    """A pull's failure as an edged error naming only the source as the client gave it."""
    from quantize.errors import FetchError, QuantizeError, UnknownType

    label = plan.label
    log.warning("pull of %s failed: %r", label, exc)
    if isinstance(exc, UnknownType):
        return InvalidRequest(_redact(str(exc)), param="model")
    if isinstance(exc, FetchError):
        text = str(exc)
        if text.startswith(f"{label}: no "):  # the repo lacks the type: its own file names
            return NotFound(f"pull failed: {_redact(text)}", param="model")
        status = _hub_status(exc)
        if status in (401, 403):
            why = "needs access (a gated or private repository: set HF_TOKEN)"
        elif status == 404 or "not found" in text.lower():
            why = "was not found"
        elif status is None:
            why = "could not be fetched (is the hub reachable?)"
        else:
            why = f"could not be fetched (the hub answered {status})"
        return NotFound(f"pull failed: `{label}` {why}", param="model")
    if isinstance(exc, QuantizeError):
        return InvalidRequest(f"pull failed: `{label}`: {_redact(str(exc))}", param="model")
    if isinstance(exc, OSError):
        return Unavailable(
            f"pull failed: `{label}` could not be written to the models directory "
            "(see the daemon's log)"
        )
    return InvalidRequest(f"pull failed: `{label}` could not be converted", param="model")


async def pull(registry: ModelRegistry, plan: PullPlan) -> Path:
    """Run a planned pull off the event loop, then serve the result: rescan, and unload the
    old version of a replaced model if it is loaded and idle (a busy one keeps serving the
    old file until its requests end and it is unloaded)."""
    target = await asyncio.to_thread(run_pull, plan)
    registry.rescan()
    if registry.is_loaded(plan.model) and _in_use(registry, plan.model) == 0:
        await registry.unload(plan.model)
    return target


def known_name(registry: ModelRegistry, ref: str | None, param: str = "model") -> str:
    """The servable name `ref` names exactly (`x:latest` is `x`, as Ollama tags go); never
    the zero-config stand-in for an unknown name."""
    if ref is None:
        raise InvalidRequest(f"{param} is required", param=param)
    if registry.knows(ref):
        return ref
    base, _, tag = ref.rpartition(":")
    if base and tag == "latest" and registry.knows(base):
        return base
    raise ModelNotFound(f'model "{ref}" not found, try pulling it first', param=param)


def _in_use(registry: ModelRegistry, key: str) -> int:
    """Requests holding `key` right now (leases, or work still queued on its worker)."""
    busy = registry.leases(key)
    for lm in registry.loaded():
        if lm.name == key:
            busy = max(busy, lm.worker.outstanding)
    return busy


def _refuse_if_busy(registry: ModelRegistry, key: str) -> None:
    n = _in_use(registry, key)
    if n:
        s = "" if n == 1 else "s"
        raise Conflict(f"`{key}` is in use by {n} request{s}; retry when it is idle", param="model")


def own_file(registry: ModelRegistry, folder: Path, name: str) -> ModelEntry:
    """The entry of `name` if it is a model file of the models folder (what may be deleted)."""
    entry = registry.resolve(name)
    if entry.alias_of is not None:
        raise InvalidRequest(
            f"`{entry.name}` is an alias from the configuration; remove it there", param="model"
        )
    if entry.name == registry.default_name:
        raise InvalidRequest("the default model cannot be deleted", param="model")
    try:
        inside = entry.path.parent.resolve() == folder.resolve()
    except OSError:
        inside = False
    if not inside:
        raise InvalidRequest(f"`{entry.name}` is not in the models directory", param="model")
    return entry


async def delete(registry: ModelRegistry, folder: Path, ref: str | None) -> list[str]:
    """Delete a model of the models folder: every split part and its sidecar, after unloading
    it; Conflict while requests hold it. The file names removed."""
    entry = own_file(registry, folder, known_name(registry, ref))
    _refuse_if_busy(registry, entry.name)
    # No await between the check and the unload's first step: no request can lease it between.
    await registry.unload(entry.name)
    gone = files.remove(folder, entry.name)
    registry.rescan()
    return [p.name for p in gone]


async def unload(registry: ModelRegistry, ref: str | None) -> bool:
    """Unload a model now unless requests hold it (Conflict); whether it was loaded."""
    name = known_name(registry, ref)
    entry = registry.resolve(name)
    key = entry.alias_of or entry.name
    _refuse_if_busy(registry, key)
    was = registry.is_loaded(key)
    await registry.unload(key)
    return was


async def copy(registry: ModelRegistry, folder: Path, source: str | None, destination: str) -> str:
    """A servable model under a new name in the models folder (hard links where possible);
    Conflict if the name is taken. The new name."""
    src = registry.resolve(known_name(registry, source, "source"))
    name = files.check_name(destination)
    if registry.knows(name) or files.model_files(folder, name):
        raise Conflict(f"a model named `{name}` already exists", param="destination")
    try:
        await asyncio.to_thread(files.copy_model, src.path, folder, name)
    except OSError as exc:
        log.warning("copy of %s failed: %r", src.name, exc)
        raise Unavailable(f"copy of `{src.name}` failed (see the daemon's log)") from exc
    registry.rescan()
    return name
