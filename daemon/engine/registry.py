"""Which names are servable, and the models loaded for them."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from daemon.engine.loaded import EngineOptions, LoadedModel
from daemon.errors import ModelNotFound

log = logging.getLogger("edged.registry")


@dataclass(frozen=True)
class ModelEntry:
    """A servable name: a file stem or an alias of one."""

    name: str
    path: Path
    alias_of: str | None = None


class ModelRegistry:
    """Maps request model names to GGUF files; loads a model on first use."""

    def __init__(
        self,
        default_path: Path,
        options: EngineOptions,
        *,
        models_dir: Path | None = None,
        aliases: dict[str, str] | None = None,
    ) -> None:
        self.options = options
        self._models_dir = models_dir
        self._alias_spec = dict(aliases or {})
        self.default_name = default_path.stem
        self._default_path = default_path
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, LoadedModel] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.rescan()

    def rescan(self) -> None:
        """(Re)read the models directory and aliases."""
        files: dict[str, Path] = {self.default_name: self._default_path}
        if self._models_dir is not None and self._models_dir.is_dir():
            for p in sorted(self._models_dir.glob("*.gguf")):
                files.setdefault(p.stem, p)
        entries = {n: ModelEntry(n, p) for n, p in files.items()}
        for alias, target in self._alias_spec.items():
            if target in files:
                entries[alias] = ModelEntry(alias, files[target], alias_of=target)
                continue
            path = Path(target).expanduser()
            if path.suffix == ".gguf":
                entries.setdefault(path.stem, ModelEntry(path.stem, path))
                entries[alias] = ModelEntry(alias, path, alias_of=path.stem)
            else:
                log.warning("alias %s -> %s names no known model; ignored", alias, target)
        self._entries = entries

    def entries(self) -> list[ModelEntry]:
        """Every servable name, files first then aliases."""
        return sorted(self._entries.values(), key=lambda e: (e.alias_of is not None, e.name))

    def resolve(self, name: str | None) -> ModelEntry:
        """The entry for a requested name (None = the default model)."""
        entry = self._entries.get(name or self.default_name)
        if entry is None:
            raise ModelNotFound(f"The model `{name}` does not exist", param="model")
        return entry

    def loaded(self) -> list[LoadedModel]:
        """Models currently in memory."""
        return list(self._loaded.values())

    def is_loaded(self, name: str) -> bool:
        """Whether the file-stem model `name` is in memory."""
        return name in self._loaded

    async def get(self, name: str | None) -> LoadedModel:
        """The loaded model for `name`, loading it (off the event loop) on first use."""
        entry = self.resolve(name)
        key = entry.alias_of or entry.name
        lm = self._loaded.get(key)
        if lm is not None:
            return lm
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            lm = self._loaded.get(key)
            if lm is None:
                log.info("loading %s from %s", key, entry.path)
                lm = await asyncio.to_thread(LoadedModel, key, entry.path, self.options)
                self._loaded[key] = lm
        return lm

    def close(self) -> None:
        """Unload everything."""
        for lm in self._loaded.values():
            lm.close()
        self._loaded.clear()
