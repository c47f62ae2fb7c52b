"""Resumable streams, as llama-server has them: a streamed answer whose request carries
`X-Conversation-Id` is recorded as it is sent and runs to its end even when the client hangs
up (a page reload, a dropped connection).

- `GET /v1/stream?conv_id=ID&from=N` replays the stream's bytes from offset N (0: from the
  start) and follows it live until it ends;
- `DELETE /v1/stream?conv_id=ID` stops the generation and forgets the stream (204, also for
  an unknown id);
- `POST /v1/streams/lookup` `{"conversation_ids": [...]}` says which of those ids have a
  stream (done or not, its size); it never lists ids it was not asked about.

A stream belongs to the API key that started it: another key's requests find nothing (404),
exactly as for an id that never existed. Each stream keeps its last `max_bytes` (a reader
asking for an older offset is told to restart), lives `ttl` seconds after its end, and a key
keeps at most `per_key` of them (starting one more forgets its oldest, stopping it if live).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Annotated, Any

from litestar import Request, Router, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, Parameter
from litestar.response import Stream
from pydantic import Field

from daemon.api.fields import ProtocolModel
from daemon.api.llamacpp.errors import SHAPE
from daemon.core.watch import RequestRecord, current, request_owner
from daemon.errors import EdgedError, InvalidRequest, NotFound

log = logging.getLogger("edged.api")

HEADER = "x-conversation-id"
MAX_ID = 256  # characters of a conversation id


class StreamStopped(EdgedError):
    """The stream's owner stopped it (DELETE /v1/stream)."""

    status_code = 400
    error_type = "invalid_request_error"
    code = "stream_cancelled"


@dataclass(eq=False)
class Session:
    """One recorded stream: its bytes (the last `cap` of them), whether it ended, and the
    detached request its generation runs under."""

    owner: str
    conv_id: str
    record: RequestRecord
    cap: int
    started_at: float = field(default_factory=time.time)
    completed_at: float | None = None
    data: bytearray = field(default_factory=bytearray)
    dropped: int = 0  # bytes cut from the front to keep within `cap`
    task: asyncio.Task[None] | None = None
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    @property
    def size(self) -> int:
        """Bytes written so far (the offset the next byte will have)."""
        return self.dropped + len(self.data)

    def info(self) -> dict[str, Any]:
        """What `/v1/streams/lookup` says of it (llama-server's fields)."""
        return {
            "conversation_id": self.conv_id,
            "is_done": self.completed_at is not None,
            "total_bytes": self.size,
            "started_at": int(self.started_at),
            "completed_at": int(self.completed_at or 0),
        }

    async def append(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.cap:
            cut = len(self.data) - self.cap
            del self.data[:cut]
            self.dropped += cut
        async with self.changed:
            self.changed.notify_all()

    async def end(self) -> None:
        self.completed_at = time.time()
        async with self.changed:
            self.changed.notify_all()

    def _moved(self, offset: int) -> bool:
        return self.size > offset or self.completed_at is not None

    async def read(self, offset: int) -> AsyncIterator[bytes]:
        """The bytes from `offset` on, as they come, until the stream ends."""
        while True:
            if offset < self.dropped:
                return  # cut from the front meanwhile: this reader was too slow
            if offset < self.size:
                chunk = bytes(self.data[offset - self.dropped :])
                offset += len(chunk)
                yield chunk
                continue
            if self.completed_at is not None:
                return
            async with self.changed:
                await self.changed.wait_for(partial(self._moved, offset))


class StreamStore:
    """The resumable streams of this daemon, keyed by (API key identity, conversation id)."""

    def __init__(
        self,
        records: set[RequestRecord],
        *,
        max_bytes: int = 4 << 20,
        ttl: float = 300.0,
        per_key: int = 16,
    ) -> None:
        # The service's requests in flight: a detached generation is one of them, so the
        # drain waits for it and cuts it at its deadline like any other.
        self._records = records
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.per_key = per_key
        self._sessions: dict[tuple[str, str], Session] = {}

    def _expire(self) -> None:
        cutoff = time.time() - self.ttl
        for key, s in list(self._sessions.items()):
            if s.completed_at is not None and s.completed_at <= cutoff:
                del self._sessions[key]

    def get(self, owner: str, conv_id: str) -> Session | None:
        """The caller's stream of that id, if it has one."""
        self._expire()
        return self._sessions.get((owner, conv_id))

    def lookup(self, owner: str, ids: list[str]) -> list[dict[str, Any]]:
        """The caller's streams among `ids`; an id also matches `ID::MODEL` (llama-server's
        per-model variant of a conversation)."""
        self._expire()
        out = []
        for rid in ids:
            for (who, conv), s in self._sessions.items():
                if who == owner and (conv == rid or conv.startswith(rid + "::")):
                    out.append(s.info())
        return out

    def stop(self, owner: str, conv_id: str) -> None:
        """Stop the caller's stream of that id (its generation too) and forget it."""
        session = self._sessions.pop((owner, conv_id), None)
        if session is not None:
            _stop(session)

    def start(
        self, owner: str, conv_id: str, source: AsyncIterable[bytes], http: RequestRecord
    ) -> Session:
        """Record `source` (a stream response's bytes) under the caller's id, produced by a
        task of its own: the HTTP request that started it is then only its first reader.

        The generation moves to a detached request: its models' leases, its timeout and its
        handles (the stream registers them on first iteration) are no longer the HTTP
        request's, so the client's hang-up does not cut it.
        """
        self._expire()
        old = self._sessions.pop((owner, conv_id), None)
        if old is not None:
            _stop(old)
        mine = [s for (who, _), s in self._sessions.items() if who == owner]
        if len(mine) >= self.per_key:
            oldest = min(mine, key=lambda s: (s.completed_at is None, s.started_at))
            self._sessions.pop((owner, oldest.conv_id), None)
            _stop(oldest)
        record = RequestRecord(timeout=http.timeout, owner=http.owner, owner_limit=http.owner_limit)
        record.model = http.model
        record.leases.take(http.leases)
        session = Session(owner, conv_id, record, self.max_bytes)
        self._sessions[(owner, conv_id)] = session
        token = current.set(record)
        try:  # the task's context holds the detached record from its first step
            session.task = asyncio.create_task(self._produce(session, source, http))
        finally:
            current.reset(token)
        return session

    async def _produce(
        self, session: Session, source: AsyncIterable[bytes], http: RequestRecord
    ) -> None:
        record = session.record
        self._records.add(record)
        try:
            async for chunk in source:
                await session.append(chunk)
        except asyncio.CancelledError:
            pass  # stopped: the stream's own `finally` cancels its generation
        except Exception:  # the stream frames its own errors; anything else is logged
            log.exception("a resumable stream failed")
        finally:
            with contextlib.suppress(Exception):
                await source.aclose()  # type: ignore[attr-defined]
            record.leases.close()
            self._records.discard(record)
            # What it generated counts for the request that started it (its access log line
            # and metrics, written when its last reader byte is sent; none if it left early).
            http.model = http.model or record.model
            http.prompt_tokens += record.prompt_tokens
            http.completion_tokens += record.completion_tokens
            http.latencies += record.latencies
            log.info(
                "resumable stream %r ended: %d prompt, %d completion tokens",
                session.conv_id,
                record.prompt_tokens,
                record.completion_tokens,
            )
            await session.end()

    async def close(self) -> None:
        """Shutdown: stop every stream still producing."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for s in sessions:
            _stop(s)
        await asyncio.gather(*(s.task for s in sessions if s.task), return_exceptions=True)


def _stop(session: Session) -> None:
    session.record.cut(StreamStopped("the stream was stopped (DELETE /v1/stream)"))
    if session.task is not None and not session.task.done():
        session.task.cancel()


def conversation_id(request: Request[Any, Any, Any]) -> str | None:
    """The request's `X-Conversation-Id`, if it carries a usable one."""
    value = request.headers.get(HEADER)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_ID:
        return None  # not recorded, rather than refused after the answer has begun
    return value.strip()


def resumable(
    request: Request[Any, Any, Any], source: AsyncIterable[bytes]
) -> AsyncIterable[bytes]:
    """The bytes a stream response sends: `source` itself, or, under `X-Conversation-Id`,
    a reader of the recording `source` now feeds."""
    conv = conversation_id(request)
    store: StreamStore | None = getattr(request.app.state, "streams", None)
    http = current.get()
    if conv is None or store is None or http is None:
        return source
    return store.start(http.owner, conv, source, http).read(0)


def _conv(conv_id: str | None) -> str:
    if conv_id is None or not conv_id.strip():
        raise InvalidRequest("conv_id (the conversation id) is required", param="conv_id")
    if len(conv_id) > MAX_ID:
        raise InvalidRequest(f"conv_id is at most {MAX_ID} characters", param="conv_id")
    return conv_id.strip()


@get("/v1/stream", media_type="text/event-stream")
async def read_stream(
    streams: NamedDependency[StreamStore],
    conv_id: str | None = None,
    offset: Annotated[int, Parameter(query="from", ge=0)] = 0,
) -> Stream:
    """Replay the caller's stream from byte `from`, then follow it until it ends."""
    session = streams.get(request_owner(), _conv(conv_id))
    if session is None:
        raise NotFound("stream not found or expired")
    if offset < session.dropped:
        raise InvalidRequest(
            f"offset {offset} is no longer kept (the stream keeps its last "
            f"{streams.max_bytes} bytes, from {session.dropped}): restart the request",
            param="from",
        )
    return Stream(session.read(offset), media_type="text/event-stream")


@delete("/v1/stream", status_code=204)
async def stop_stream(streams: NamedDependency[StreamStore], conv_id: str | None = None) -> None:
    """Stop the caller's stream (its generation too) and forget it; 204 whether or not it
    existed."""
    streams.stop(request_owner(), _conv(conv_id))


class LookupRequest(ProtocolModel):
    """The conversation ids a client already knows (its own sidebar)."""

    conversation_ids: Annotated[
        list[Annotated[str, Field(max_length=MAX_ID)]], Field(max_length=256)
    ]


@post("/v1/streams/lookup", status_code=200)
async def lookup_streams(
    data: JSONBody[LookupRequest], streams: NamedDependency[StreamStore]
) -> list[dict[str, Any]]:
    """Which of the given ids the caller has a stream for."""
    ids = [i for i in data.conversation_ids if i]
    return streams.lookup(request_owner(), ids)


# llama-server's routes, answering errors in llama-server's shape.
router = Router(
    path="/",
    route_handlers=[read_stream, stop_stream, lookup_streams],
    exception_handlers=SHAPE.handlers(),
)
