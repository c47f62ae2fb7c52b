"""The outermost per-request layer: drain gate, in-flight count, metrics and the access log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from litestar.types import ASGIApp, Message, Receive, Scope, Send

from daemon.api.metrics import Metrics
from daemon.core.watch import RequestRecord, current
from daemon.errors import Unavailable
from daemon.service.state import ServiceState

access_log = logging.getLogger("edged.access")

# Scrapes go on while draining, so the shutdown itself can be watched.
_OPEN_WHILE_DRAINING = frozenset({"/metrics"})
_QUIET = frozenset({"/health", "/metrics"})


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and 0 < len(value) <= 128:
            return value.decode("latin-1")
    return uuid.uuid4().hex


class HangUpWatch:
    """An ASGI `receive` that hands the body to the app, then watches for a hang-up.

    Once the last body message has passed, one task owns the server's `receive`: when the
    client disconnects it calls `on_gone`, so a non-streamed handler awaiting its result is
    cut too (streams notice on their own). Later callers, such as Litestar's disconnect
    listener on streams, wait for that task's verdict, so no message is lost between readers.
    """

    def __init__(self, receive: Receive, on_gone: Callable[[], None]) -> None:
        self._receive = receive
        self._on_gone = on_gone
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __call__(self) -> Message:
        if self._task is None and not self._closed.is_set():
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self._gone()
            elif not message.get("more_body", False):
                self._task = asyncio.create_task(self._watch())
            return message
        await self._closed.wait()
        return {"type": "http.disconnect"}

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._gone()

    def _gone(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._on_gone()

    async def stop(self) -> None:
        """The response is over: stop watching."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class ServiceMiddleware:
    """Builds the ASGI wrapper Litestar puts around every route handler."""

    def __init__(
        self,
        state: ServiceState,
        metrics: Metrics,
        *,
        request_timeout: float | None,
        log_json: bool,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.log_json = log_json

    def __call__(self, app: ASGIApp) -> ASGIApp:
        """Wrap one route's ASGI app."""

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            await self._http(app, scope, receive, send)

        return wrapped

    async def _http(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if self.state.draining and path not in _OPEN_WHILE_DRAINING:
            raise Unavailable("the server is shutting down", retry_after=5)
        rid = _request_id(scope)
        status = 500
        header = (b"x-request-id", rid.encode("latin-1"))

        async def send_tracking(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        record = RequestRecord(timeout=self.request_timeout)
        token = current.set(record)
        counted = path not in _QUIET
        self.state.inflight += counted
        self.state.records.add(record)
        start = time.perf_counter()
        watch = HangUpWatch(receive, record.hang_up)
        try:
            await app(scope, watch, send_tracking)
        finally:
            await watch.stop()
            record.leases.close()
            self.state.inflight -= counted
            self.state.records.discard(record)
            current.reset(token)
            seconds = time.perf_counter() - start
            route = scope.get("path_template") or path
            self.metrics.observe(route, scope["method"], status, seconds, record)
            if counted:
                self._log(rid, scope, status, seconds, record)

    def _log(self, rid: str, scope: Scope, status: int, seconds: float, rec: RequestRecord) -> None:
        fields: dict[str, Any] = {
            "request_id": rid,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "duration_ms": round(seconds * 1000, 1),
            "model": rec.model,
            "prompt_tokens": rec.prompt_tokens,
            "completion_tokens": rec.completion_tokens,
            "client": (scope.get("client") or ("-",))[0],
        }
        if self.log_json:
            access_log.info(json.dumps(fields, separators=(",", ":")))
        else:
            access_log.info(" ".join(f"{k}={v}" for k, v in fields.items()))
