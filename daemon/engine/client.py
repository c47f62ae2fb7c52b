"""The one narrow way into the engine for the API layer: leased models, requests, the store.

A lease holds a loaded model from the moment a request resolves it until the request's
last chunk: eviction, keep-alive reaping and the memory cap skip leased models, so a
request can never lose its model (or its safety model) half-way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from daemon.engine.adapters.lora import split_model_name
from daemon.engine.caches.cache import SequenceStore
from daemon.engine.errors import InvalidInput
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import GenerationRequest


class LeaseScope:
    """Leases that end together, e.g. when one HTTP request has sent its last byte."""

    def __init__(self) -> None:
        self._releases: list[Callable[[], None]] = []
        # Models held by this scope: what one request needs at once (the caps count them).
        self.names: set[str] = set()

    def add(self, release: Callable[[], None]) -> None:
        self._releases.append(release)

    def take(self, other: LeaseScope) -> None:
        """Hold `other`'s leases from now on (they end with this scope, not with `other`)."""
        self._releases += other._releases
        self.names |= other.names
        other._releases = []

    def close(self) -> None:
        """End every lease of this scope (idempotent)."""
        releases, self._releases = self._releases, []
        for release in releases:
            release()


@dataclass(frozen=True)
class Lease:
    """A leased model, and the LoRA adapters its requested name turned on (`BASE+NAME`, each
    at its `--lora` scale; empty for a plain name)."""

    model: LoadedModel
    adapters: tuple[str, ...] = ()


def named_adapters(lm: LoadedModel, requested: str | None) -> tuple[str, ...]:
    """The adapters a `BASE+NAME` model name asks of `lm`; an adapter `lm` does not have is
    an InvalidInput on `model`."""
    if not requested or "+" not in requested or requested == lm.name:
        return ()
    names = tuple(split_model_name(requested)[1])
    unknown = [n for n in names if n not in lm.adapter_names]
    if unknown or not all(names):
        known = ", ".join(lm.adapter_names) or "none are loaded"
        raise InvalidInput(
            f"model {requested!r}: unknown LoRA adapter {unknown[0] if unknown else ''!r} "
            f"of `{lm.name}` (known: {known})",
            subject="model",
        )
    return names


class EngineClient:
    """Leases, submission, tokenization and the request_id store, over one registry."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry

    async def acquire(
        self,
        name: str | None,
        scope: LeaseScope | None,
        keep_alive: float | str | None = "default",
    ) -> LoadedModel:
        """The loaded model for `name`, leased until `scope` closes (no scope: no lease)."""
        if scope is None:
            return await self.registry.get(name, keep_alive)
        lm = await self.registry.get(name, keep_alive, hold=True, mine=frozenset(scope.names))
        scope.names.add(lm.name)
        scope.add(lambda: self.registry.release(lm))
        return lm

    async def lease_model(
        self,
        name: str | None,
        scope: LeaseScope | None,
        keep_alive: float | str | None = "default",
    ) -> Lease:
        """`acquire`, with the adapters the name turns on checked against the model's own."""
        lm = await self.acquire(name, scope, keep_alive)
        return Lease(lm, named_adapters(lm, name))

    @asynccontextmanager
    async def lease(
        self, name: str | None, keep_alive: float | str | None = "default"
    ) -> AsyncIterator[LoadedModel]:
        """`async with client.lease(name) as lm`: the model cannot be unloaded inside."""
        scope = LeaseScope()
        try:
            yield await self.acquire(name, scope, keep_alive)
        finally:
            scope.close()

    @staticmethod
    def submit(lm: LoadedModel, request: GenerationRequest) -> RequestHandle:
        """Queue a generation on a leased model."""
        return lm.submit(request)

    @staticmethod
    def tokenize(lm: LoadedModel, text: str) -> list[int]:
        """Prompt text to tokens (BOS once where the model wants it)."""
        return lm.tokenize(text)

    def store(self, model: str) -> SequenceStore:
        """The request_id store of a model (it outlives unloads)."""
        return self.registry.store(model)

    def stores(self) -> dict[str, SequenceStore]:
        """Every model's request_id store."""
        return self.registry.stores()
