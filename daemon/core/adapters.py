"""The `lora` request field every generation dialect shares, and the `BASE+NAME` model alias.

A request's adapters come from two places: the model name (`BASE+NAME`, each adapter at its
`--lora` scale) and the `lora` list (`[{"name", "scale"}]`; a listed scale wins over the
alias). llama-server's /completion names adapters by position instead (`[{"id", "scale"}]`,
ids in `--lora` order), translated here too. Adapters not named are off.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from daemon.engine.adapters.lora import AdapterSet
from daemon.engine.client import Lease
from daemon.engine.loading.loaded import LoadedModel
from daemon.errors import InvalidRequest


class AdapterRef(Protocol):
    """One adapter a request names; no scale = the adapter's `--lora` scale."""

    @property
    def name(self) -> str: ...

    @property
    def scale(self) -> float | None: ...


class AdapterId(Protocol):
    """llama-server's form: the adapter's position in the server's list, and its scale."""

    @property
    def id(self) -> int: ...

    @property
    def scale(self) -> float: ...


@dataclass(frozen=True)
class ByName:
    """An adapter reference by name (what an id turns into)."""

    name: str
    scale: float | None


# Adapters the model name turned on (BASE+NAME), by loaded model, for this HTTP request:
# set by `leased` (awaited in the handler's own task, so the caller sees it), read at submit.
_alias: ContextVar[dict[str, tuple[str, ...]] | None] = ContextVar("edged_lora", default=None)


def note_alias(lease: Lease) -> None:
    """Remember the adapters a `BASE+NAME` model name turned on (the engine resolved and
    checked them at the lease), for what this request submits to that model."""
    if lease.adapters:
        _alias.set({**(_alias.get() or {}), lease.model.name: lease.adapters})


def from_ids(lm: LoadedModel, ids: Sequence[AdapterId] | None) -> list[ByName] | None:
    """llama-server's `[{id, scale}]` as named references (ids index the `--lora` order)."""
    if ids is None:
        return None
    names = lm.adapter_names
    for ref in ids:
        if ref.id >= len(names):
            raise InvalidRequest(
                f"lora id {ref.id} does not exist: `{lm.name}` has {len(names)} adapter(s)",
                param="lora",
            )
    return [ByName(names[r.id], r.scale) for r in ids]


def request_adapters(lm: LoadedModel, refs: Sequence[AdapterRef] | None) -> AdapterSet:
    """The adapter set of a request: the model name's alias, then the `lora` field."""
    wanted: dict[str, float | None] = dict.fromkeys((_alias.get() or {}).get(lm.name, ()))
    seen: set[str] = set()
    for ref in refs or ():
        if ref.name in seen:
            raise InvalidRequest(f"LoRA adapter {ref.name!r} is listed twice", param="lora")
        seen.add(ref.name)
        wanted[ref.name] = ref.scale
    return lm.adapter_set(list(wanted.items()))
