"""Which names are servable, and the models loaded for them: loading on first use, leases,
keep-alive. Names come from loading/names.py; what to unload so a model fits, from
loading/eviction.py."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from daemon.engine.adapters.lora import AdapterSpec, split_model_name
from daemon.engine.caches.cache import SequenceStore
from daemon.engine.errors import LoadFailed, UnknownModel
from daemon.engine.loading.chat_template import Builtin
from daemon.engine.loading.eviction import Eviction
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.names import ModelEntry, projector_beside, scan, sole_generator
from daemon.engine.loading.options import EngineOptions
from daemon.engine.native.ggufmeta import projector_senses

__all__ = ["ModelEntry", "ModelRegistry"]

_Spec = TypeVar("_Spec", Path, str)  # what a per-model flag gives a model: a file, a name

log = logging.getLogger("edged.registry")


def _file_key(path: Path) -> tuple[int, int, int, int] | None:
    """What tells one file under a path from another: device, inode, size, mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class ModelRegistry(Eviction):
    """Maps request model names to GGUF files; loads a model on first use."""

    def __init__(
        self,
        default_path: Path,
        options: EngineOptions,
        *,
        models_dir: Path | None = None,
        aliases: dict[str, str] | None = None,
        keep_alive: float | None = None,
        max_loaded: int | None = None,
        max_memory: int | None = None,
        strict_names: bool = False,
        adapters: tuple[AdapterSpec, ...] = (),
        projectors: dict[str | None, Path] | None = None,
        templates: dict[str | None, Path] | None = None,
        builtin_templates: dict[str | None, str] | None = None,
    ) -> None:
        self.options = options
        # --mmproj projectors, --chat-template-file templates and --chat-template built-in
        # formats by model name (None: the default model's).
        self.projector_specs = dict(projectors or {})
        self.template_specs = dict(templates or {})
        self.builtin_specs = dict(builtin_templates or {})
        # --lora adapters; each belongs to its `base` model (None: the default one).
        self.adapter_specs = adapters
        # Zero-config (llama-server's rule): with one generation model, unknown names get it.
        self.strict_names = strict_names
        self._sole: ModelEntry | None = None
        # ... and keep the loaded models' weights + KV in system memory, with their prompt
        # caches, under `max_memory` bytes (None = no cap; GPUs are bounded per device).
        self.max_memory = max_memory
        # Lifecycle of non-default models: unload after `keep_alive` idle seconds (None = never),
        # and keep at most `max_loaded` models, evicting the least recently used idle one.
        self.keep_alive = keep_alive
        # A request's own keep_alive (Ollama style) overrides it for its model until the next.
        self._keep_alive_for: dict[str, float | None] = {}
        self.max_loaded = max_loaded
        self.loads = 0
        self.load_failures = 0
        self.unloads = 0
        self._last_used: dict[str, float] = {}
        self._load_lock = asyncio.Lock()
        self._models_dir = models_dir
        self._alias_spec = dict(aliases or {})
        self.default_name = default_path.stem
        self._default_path = default_path
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, LoadedModel] = {}
        # Awaited before every load; may raise (an RPC worker is down) or adjust self.options.
        self.before_load: Callable[[], Awaitable[None]] | None = None
        # Requests holding a model (from resolution to their last chunk): never unloaded.
        self._leases: Counter[str] = Counter()
        # request_id stores by model: they outlive unloads (and restarts, with store_dir).
        self._stores: dict[str, SequenceStore] = {}
        # The file each loaded model was read from, as (device, inode, size, mtime): a file
        # replaced under the name since is served by a new load to new requests.
        self._file_keys: dict[str, tuple[int, int, int, int] | None] = {}
        # Models whose file was replaced while requests held them: they finish those
        # requests (with their own lease counts), then `reap` frees them.
        self._stale: dict[LoadedModel, int] = {}
        self.rescan()

    def rescan(self, aliases: dict[str, str] | None = None) -> None:
        """(Re)read the models directory, and take new aliases if given."""
        if aliases is not None:
            self._alias_spec = dict(aliases)
        self._entries = scan(
            self.default_name, self._default_path, self._models_dir, self._alias_spec
        )
        self._sole = sole_generator(self._entries)

    def entries(self) -> list[ModelEntry]:
        """Every servable name, files first then aliases."""
        return sorted(self._entries.values(), key=lambda e: (e.alias_of is not None, e.name))

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry for a requested name (None = the default model)."""
        entry = self._entries.get(name or self.default_name)
        if entry is None and name and "+" in name:  # BASE+ADAPTER: the base model
            entry = self._entries.get(split_model_name(name)[0])
        if entry is None and not self.strict_names and self._sole is not None:
            return self._sole
        if entry is None:
            raise UnknownModel(f"The model `{name}` does not exist", subject="model")
        return entry

    def knows(self, name: str | None) -> bool:
        """Whether `name` is a servable name itself (not answered by the zero-config rule)."""
        return name is not None and name in self._entries

    def answering_name(self, requested: str | None, loaded: str) -> str:
        """The `model` a response reports: the name asked for if it exists, else the model's."""
        return requested if self.knows(requested) else loaded  # type: ignore[return-value]

    def idle_deadline(self, name: str) -> float | None:
        """When (time.monotonic) the loaded model `name` unloads if left idle; None = never."""
        keep = self._keep_alive_of(name)
        if keep is None or name == self.default_name or name not in self._loaded:
            return None
        return self._last_used.get(name, time.monotonic()) + keep

    def loaded(self) -> list[LoadedModel]:
        """Models currently in memory."""
        return list(self._loaded.values())

    def store(self, name: str) -> SequenceStore:
        """The request_id store of the file-stem model `name` (created on first use)."""
        store = self._stores.get(name)
        if store is None:
            o = self.options
            spill = o.store_dir / name.replace("/", "_") if o.store_dir else None
            store = SequenceStore(
                o.store_max_bytes,
                spill_dir=spill,
                owner_max_bytes=o.store_key_max_bytes,
                ttl=o.store_ttl,
            )
            self._stores[name] = store
        return store

    def stores(self) -> dict[str, SequenceStore]:
        """Every request_id store created so far, by model."""
        return dict(self._stores)

    def hold(self, name: str) -> None:
        """Lease the loaded model `name`: eviction and keep-alive leave it alone."""
        self._leases[name] += 1

    def unhold(self, name: str) -> None:
        """End one lease of `name`; its idle time starts now."""
        self._leases[name] -= 1
        if self._leases[name] <= 0:
            del self._leases[name]
        self._last_used[name] = time.monotonic()

    def leases(self, name: str) -> int:
        """Leases held on `name` right now."""
        return self._leases[name]

    def is_loaded(self, name: str) -> bool:
        """Whether the file-stem model `name` is in memory."""
        return name in self._loaded

    async def get(
        self,
        name: str | None,
        keep_alive: float | str | None = "default",
        *,
        hold: bool = False,
        mine: frozenset[str] = frozenset(),
    ) -> LoadedModel:
        """The loaded model for `name`, loading it (off the event loop) on first use.

        `keep_alive` (seconds; None = until evicted) replaces the daemon's keep-alive for this
        model from now on; the string "default" leaves it as it is. With `hold`, the model
        comes back leased (see `hold`); the caller must `unhold` it. `mine`: models the same
        request already holds (with the default model they can never make room for it).
        """
        entry = self.resolve(name)
        key = entry.alias_of or entry.name
        if keep_alive != "default":
            self._keep_alive_for[key] = keep_alive  # type: ignore[assignment]
        self._last_used[key] = time.monotonic()
        lm = self._loaded.get(key)
        if lm is not None and self._file_keys.get(key) != _file_key(entry.path):
            await self._replaced(key)
            lm = None
        if lm is not None:
            if hold:
                self.hold(key)
            return lm
        # One load at a time: loads are memory-bound anyway, and the cap is checked race-free.
        async with self._load_lock:
            lm = self._loaded.get(key)
            if lm is None:
                file_key = _file_key(entry.path)
                if self.before_load is not None:
                    await self.before_load()
                await self._make_gpu_room(entry.path, mine)
                incoming = await self._incoming_host_bytes(entry.path)
                projector = self.projector_of(key, entry.path)
                if projector is not None:  # its weights load with it, counted as the model's
                    incoming += self._file_size(projector)
                await self._make_room(incoming, mine)
                await self._share_caches(incoming, 1)
                log.info("loading %s from %s", key, entry.path)
                try:
                    lm = await asyncio.to_thread(
                        LoadedModel,
                        key,
                        entry.path,
                        self.options,
                        self.store(key),
                        self.adapters_of(key),
                        projector,
                        self.template_of(key),
                    )
                except Exception:
                    self.load_failures += 1
                    raise
                self.loads += 1
                self._loaded[key] = lm
                self._file_keys[key] = file_key
                await self._fit_memory(key)
                await self._share_caches()
            self._last_used[key] = time.monotonic()
            if hold:  # before the lock is let go: no other load can evict it in between
                self.hold(key)
        return lm

    async def _replaced(self, key: str) -> None:
        """`key`'s file was replaced under it: new requests get a new load of the file. An
        idle model is unloaded now; a busy one keeps its requests (and their leases) and is
        freed by `reap` once they end, never under them."""
        lm = self._loaded[key]
        held = self._leases.pop(key, 0)
        if not held and lm.worker.outstanding == 0:
            log.info("%s: its file was replaced; unloading the old one", key)
            await self.unload(key)
            return
        log.info("%s: its file was replaced; the old one finishes %d request(s)", key, held)
        del self._loaded[key]
        self._stale[lm] = held

    def release(self, lm: LoadedModel) -> None:
        """End one lease of the model object `lm` (the current one, or one being replaced)."""
        if lm in self._stale:
            self._stale[lm] = max(0, self._stale[lm] - 1)
        else:
            self.unhold(lm.name)

    def projector_of(self, key: str, path: Path) -> Path | None:
        """The vision projector of model `key` (file `path`): its --mmproj, else
        `mmproj-<stem>.gguf` beside the file (llama-server's and LM Studio's `mmproj-`
        prefix, tied to one model by its stem), else none."""
        own = self._spec_of(self.projector_specs, key)
        return own if own is not None else projector_beside(path)

    def template_of(self, key: str) -> str | Builtin | None:
        """Model `key`'s --chat-template (a built-in format), or the text of its
        --chat-template-file, read now (None: its own)."""
        builtin = self._spec_of(self.builtin_specs, key)
        if builtin is not None:
            return Builtin(builtin)
        path = self._spec_of(self.template_specs, key)
        if path is None:
            return None
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:  # moved or rewritten since the daemon started
            raise LoadFailed(f"{key}: its --chat-template-file cannot be read ({exc})") from exc

    def _spec_of(self, specs: dict[str | None, _Spec], key: str) -> _Spec | None:
        """Model `key`'s file in a per-model flag's specs, which may name it by an alias."""
        for name, path in specs.items():
            entry = self._entries.get(name) if name is not None else None
            owner = (
                self.default_name
                if name is None
                else ((entry.alias_of or entry.name) if entry is not None else name)
            )
            if owner == key:
                return path
        return None

    def senses_of(self, e: ModelEntry) -> tuple[bool, bool] | None:
        """Whether the model of entry `e` sees images and hears audio, from its projector's
        header (None: it has no projector), without loading anything."""
        proj = self.projector_of(e.alias_of or e.name, e.path)
        return None if proj is None else projector_senses(proj)

    def adapters_of(self, key: str) -> tuple[AdapterSpec, ...]:
        """The --lora adapters of a model (by file stem; a spec may name it by an alias)."""

        def owner(spec: AdapterSpec) -> str:
            if spec.base is None:
                return self.default_name
            entry = self._entries.get(spec.base)
            return (entry.alias_of or entry.name) if entry is not None else spec.base

        return tuple(s for s in self.adapter_specs if owner(s) == key)

    @property
    def loading(self) -> bool:
        """Whether a model is being loaded right now."""
        return self._load_lock.locked()

    def forget(self, name: str) -> LoadedModel | None:
        """Take `name` out of service without freeing it (its llama.cpp objects are stuck on
        a lost RPC worker: freeing them would talk to it); the next request loads it anew.
        The caller then stops it with `LoadedModel.abandon` (off the event loop), which
        ends its requests on its own scheduler thread and releases its prompt cache."""
        return self._loaded.pop(name, None)

    def _keep_alive_of(self, name: str) -> float | None:
        return self._keep_alive_for.get(name, self.keep_alive)

    async def reap(self, now: float | None = None) -> list[str]:
        """Unload non-default models idle for longer than their keep-alive; the names unloaded."""
        now = time.monotonic() if now is None else now
        for old, held in list(self._stale.items()):  # replaced files whose requests ended
            if not held and old.worker.outstanding == 0:
                del self._stale[old]
                await asyncio.to_thread(old.close)
        for name, lm in self._loaded.items():
            if lm.worker.outstanding > 0:
                self._last_used[name] = now  # a long generation is use, not idleness
        expired = []
        for n in self._loaded:
            keep = self._keep_alive_of(n)
            if keep is not None and self._idle(n) and now - self._last_used.get(n, now) >= keep:
                expired.append(n)
        for name in expired:
            await self.unload(name)
        return expired

    def unload_deadline(self, name: str) -> float | None:
        """Wall-clock time at which an idle loaded `name` is unloaded; None = never."""
        keep = self._keep_alive_of(name)
        if keep is None or name == self.default_name or name not in self._loaded:
            return None
        last = self._last_used.get(name, time.monotonic())
        return time.time() + max(0.0, last + keep - time.monotonic())

    def persist(self) -> None:
        """Save what survives a restart: every model's request_id store (with store_dir)."""
        for name, store in self._stores.items():
            n = store.persist()
            if n:
                log.info("%s: saved %d request_id entries", name, n)

    def close(self) -> None:
        """Unload everything."""
        for lm in [*self._loaded.values(), *self._stale]:
            lm.close()
        self._loaded.clear()
        self._stale.clear()
