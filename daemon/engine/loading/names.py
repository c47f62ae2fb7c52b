"""Servable names: GGUF files in the models folder and aliases of them (a split model by its
first part, projectors beside the models they belong to, never served themselves)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from daemon.engine.native.ggufmeta import is_embedding_file

log = logging.getLogger("edged.registry")
_SPLIT = re.compile(r"^(?P<prefix>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})$")
# Vision projectors in the models folder: mmproj-<model stem>.gguf pairs with <stem>.gguf.
PROJECTOR_PREFIX = "mmproj-"


@dataclass(frozen=True)
class ModelEntry:
    """A servable name: a file stem or an alias of one."""

    name: str
    path: Path
    alias_of: str | None = None


def scan(
    default_name: str, default_path: Path, models_dir: Path | None, aliases: dict[str, str]
) -> dict[str, ModelEntry]:
    """Every servable name: the default model, the folder's files, then the aliases."""
    files: dict[str, Path] = {default_name: default_path}
    if models_dir is not None and models_dir.is_dir():
        for p in sorted(models_dir.glob("*.gguf")):
            if p.name.startswith(PROJECTOR_PREFIX):
                continue  # a vision projector: served with its model, not as one
            # A split model is served once, from its first part, under its prefix.
            split = _SPLIT.match(p.stem)
            if split is None or int(split["i"]) == 1:
                files.setdefault(split["prefix"] if split else p.stem, p)
    entries = {n: ModelEntry(n, p) for n, p in files.items()}
    for alias, target in aliases.items():
        if target in files:
            entries[alias] = ModelEntry(alias, files[target], alias_of=target)
            continue
        path = Path(target).expanduser()
        if path.suffix == ".gguf":
            entries.setdefault(path.stem, ModelEntry(path.stem, path))
            entries[alias] = ModelEntry(alias, path, alias_of=path.stem)
        else:
            log.warning("alias %s -> %s names no known model; ignored", alias, target)
    return entries


def sole_generator(entries: dict[str, ModelEntry]) -> ModelEntry | None:
    """The one generation model among `entries` (by file), if there is exactly one: the
    zero-config rule answers unknown names with it."""
    generating = {e.path for e in entries.values() if not is_embedding_file(e.path)}
    if len(generating) != 1:
        return None
    path = generating.pop()
    return next(e for e in entries.values() if e.path == path and not e.alias_of)


def projector_beside(path: Path) -> Path | None:
    """`mmproj-<stem>.gguf` beside a model file (llama-server's and LM Studio's prefix, tied
    to one model by its stem), if it exists."""
    beside = path.with_name(f"{PROJECTOR_PREFIX}{path.stem}.gguf")
    return beside if beside.is_file() else None
