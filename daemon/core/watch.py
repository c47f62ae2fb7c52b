"""Per-request bookkeeping around engine handles: the request timeout and what metrics need."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from daemon.core.adapters import note_alias
from daemon.core.errors import to_api
from daemon.engine.client import EngineClient, LeaseScope
from daemon.engine.errors import EngineError
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import EdgedError, Timeout


class ClientGone(EdgedError):
    """The client hung up before its answer was ready; generation was cancelled (499).

    Nobody receives this status: it names the outcome in metrics and the access log, as
    nginx's 499 does.
    """

    status_code = 499
    error_type = "invalid_request_error"
    code = "client_closed_request"


@dataclass(eq=False)
class RequestRecord:
    """What one HTTP request did in the engine; filled by `watched`, read by the middleware."""

    timeout: float | None = None
    # The caller's API key identity ("" without auth), set by the key guard.
    owner: str = ""
    # That key's own cap on its running requests (key file `max_concurrency`), if any.
    owner_limit: int | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # (model, time to first token, seconds per output token or None) per finished handle
    latencies: list[tuple[str, float, float | None]] = field(default_factory=list)
    live: list[RequestHandle] = field(default_factory=list)
    # Set when the client hung up: what is running is cut, what is submitted later at once.
    gone: EdgedError | None = None
    # Models this request uses, leased until its last byte is sent (the middleware closes it).
    leases: LeaseScope = field(default_factory=LeaseScope)
    _seen: set[int] = field(default_factory=set)

    def cut(self, error: EdgedError) -> None:
        """End every generation still running for this request with `error`."""
        for h in list(self.live):
            _fail(h, error)

    def hang_up(self) -> None:
        """The client disconnected: nobody will read the answer, so stop generating it."""
        if self.gone is None:
            self.gone = ClientGone("the client closed the connection")
            self.cut(self.gone)

    def finish(self, handle: RequestHandle, now: float) -> None:
        """Account for a handle once, however many layers watched it."""
        if id(handle) in self._seen:
            return
        self._seen.add(id(handle))
        self.model = self.model or handle.model or None
        self.prompt_tokens += handle.usage.prompt_tokens
        n = handle.usage.completion_tokens
        self.completion_tokens += n
        first = handle.first_token_at
        if first is not None:
            per_token = (now - first) / (n - 1) if n > 1 else None
            self.latencies.append((handle.model, first - handle.submitted_at, per_token))


current: ContextVar[RequestRecord | None] = ContextVar("edged_request", default=None)


def request_owner() -> str:
    """The API key identity of the HTTP request being served ("" without auth)."""
    record = current.get()
    return record.owner if record is not None else ""


def request_owner_limit() -> int | None:
    """The serving request's key's own cap on running requests (None: the model's)."""
    record = current.get()
    return record.owner_limit if record is not None else None


async def leased(
    registry: ModelRegistry, name: str | None, keep_alive: float | str | None = "default"
) -> LoadedModel:
    """The loaded model for `name`, held by this HTTP request until its last byte."""
    record = current.get()
    try:
        lease = await EngineClient(registry).lease_model(
            name, record.leases if record is not None else None, keep_alive
        )
    except EngineError as exc:  # the boundary: callers see the API's own errors
        raise to_api(exc) from exc
    note_alias(lease)  # BASE+NAME turns adapters on for what this request submits
    return lease.model


def _fail(handle: RequestHandle, error: EdgedError) -> None:
    """End the waiter's wait with `error` and stop the generation at the next step."""
    # The engine keeps running until its next step: only the reader is released here, and
    # the handle's done callbacks (the request_id guard) wait for the engine itself.
    handle.fail(error)


def _expire(handle: RequestHandle, limit: float) -> None:
    _fail(handle, Timeout(f"the request did not finish within {limit:g} s"))


@contextmanager
def watched(handles: list[RequestHandle]) -> Iterator[None]:
    """Cut `handles` at the request timeout; record their usage and latencies when done."""
    record = current.get()
    timers: list[asyncio.TimerHandle] = []
    if record is not None and record.timeout is not None:
        for h in handles:
            delay = max(0.0, h.submitted_at + record.timeout - time.monotonic())
            timers.append(h.loop.call_later(delay, _expire, h, record.timeout))
    if record is not None:
        record.live.extend(handles)
        if record.gone is not None:
            for h in handles:
                _fail(h, record.gone)
    try:
        yield
    finally:
        for t in timers:
            t.cancel()
        if record is not None:
            now = time.monotonic()
            for h in handles:
                record.finish(h, now)
                record.live.remove(h)
