"""What every OpenAI chat and text completion body and chunk carries: the identity fields,
the finish reason, and llama-server's timings and prompt progress."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from daemon.core.choices import timings
from daemon.engine.handle import RequestHandle
from daemon.engine.types import Chunk, FinishReason
from daemon.version import fingerprint


@dataclass(frozen=True)
class Meta:
    """Identity fields repeated in every response object and chunk."""

    id: str
    created: int
    model: str
    object: str

    def envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": fingerprint(),
            "choices": choices,
        }


def new_meta(prefix: str, obj: str, model: str) -> Meta:
    return Meta(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, obj)


def finish_reason(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


def progress(event: dict[str, Any], chunk: Chunk) -> dict[str, Any]:
    """A chunk carrying llama-server's `prompt_progress` (asked with `return_progress`)."""
    assert chunk.progress is not None
    return {**event, "prompt_progress": chunk.progress.wire()}


async def timed(
    events: AsyncIterator[dict[str, Any]], handles: list[RequestHandle]
) -> AsyncIterator[dict[str, Any]]:
    """`timings_per_token`: every chunk carries the timings so far, as llama-server's."""
    async for event in events:
        yield event if "timings" in event else {**event, "timings": timings(handles)}


def with_timings(
    event: dict[str, Any], handles: list[RequestHandle], finished: int
) -> dict[str, Any]:
    """The chunk ending the last choice carries `timings`, as llama-server's last chunk does."""
    return {**event, "timings": timings(handles)} if finished == len(handles) else event
