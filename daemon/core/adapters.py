"""The `lora` request field every generation dialect shares, and the `BASE+NAME` model alias.

A request's adapters come from two places: the model name (`BASE+NAME`, each adapter at its
`--lora` scale) and the `lora` list (`[{"name", "scale"}]`; a listed scale wins over the
alias). llama-server's /completion names adapters by position instead (`[{"id", "scale"}]`,
ids in `--lora` order), translated here too. Adapters not named are off.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from daemon.engine.adapters.lora import MAX_SCALE, AdapterSet, split_model_name
from daemon.engine.loading.loaded import LoadedModel
from daemon.errors import InvalidRequest

MAX_ADAPTERS = 16

Scale = Annotated[float, Field(ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoraRef(_Model):
    """One adapter of a request, by name; no scale = the adapter's `--lora` scale."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    scale: Scale | None = None


class LoraId(_Model):
    """llama-server's form: the adapter's position in the server's list, and its scale."""

    id: Annotated[int, Field(ge=0, lt=1 << 20)]
    scale: Scale


LoraList = Annotated[list[LoraRef], Field(max_length=MAX_ADAPTERS)]
LoraIdList = Annotated[list[LoraId], Field(max_length=MAX_ADAPTERS)]

# Adapters the model name turned on (BASE+NAME), by loaded model, for this HTTP request:
# set by `leased` (awaited in the handler's own task, so the caller sees it), read at submit.
_alias: ContextVar[dict[str, tuple[str, ...]] | None] = ContextVar("edged_lora", default=None)


def note_alias(lm: LoadedModel, requested: str | None) -> None:
    """Remember the adapters of a `BASE+NAME` model name this request resolved to `lm`;
    an unknown adapter in it is a 400 naming `model`."""
    if not requested or "+" not in requested or requested == lm.name:
        return
    names = tuple(split_model_name(requested)[1])
    unknown = [n for n in names if n not in lm.adapter_names]
    if unknown or not all(names):
        known = ", ".join(lm.adapter_names) or "none are loaded"
        raise InvalidRequest(
            f"model {requested!r}: unknown LoRA adapter {unknown[0] if unknown else ''!r} "
            f"of `{lm.name}` (known: {known})",
            param="model",
        )
    _alias.set({**(_alias.get() or {}), lm.name: names})


def from_ids(lm: LoadedModel, ids: list[LoraId] | None) -> list[LoraRef] | None:
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
    return [LoraRef(name=names[r.id], scale=r.scale) for r in ids]


def request_adapters(lm: LoadedModel, refs: list[LoraRef] | None) -> AdapterSet:
    """The adapter set of a request: the model name's alias, then the `lora` field."""
    wanted: dict[str, float | None] = dict.fromkeys((_alias.get() or {}).get(lm.name, ()))
    seen: set[str] = set()
    for ref in refs or ():
        if ref.name in seen:
            raise InvalidRequest(f"LoRA adapter {ref.name!r} is listed twice", param="lora")
        seen.add(ref.name)
        wanted[ref.name] = ref.scale
    return lm.adapter_set(list(wanted.items()))
