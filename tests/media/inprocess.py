"""The engine in process, for the media tests that drive it without HTTP: running a request,
the M-RoPE model with small batches, and an image's rows cut short part way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon.engine.decode import scheduler
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import EngineOptions, LoadedModel
from daemon.engine.types import GenerationRequest
from tests.media.conftest import CTX, PARALLEL


def qwen_engine(lm_path: Path, mmproj: Path) -> LoadedModel:
    """The M-RoPE model as the qwen_server runs it but with batches of 8 rows: the 36-row
    test image takes five steps."""
    return LoadedModel(
        "qwen",
        lm_path,
        EngineOptions(
            ctx_size=CTX, parallel=PARALLEL, threads=1, batch_size=8, ubatch_size=8, exact=True
        ),
        projector=mmproj,
    )


def run(lm: LoadedModel, req: GenerationRequest) -> tuple[list[int], RequestHandle]:
    """The tokens of a request (none if it was cancelled) and its handle, once it ended."""

    async def main() -> tuple[list[int], RequestHandle]:
        h = lm.submit(req)
        tokens: list[int] = []
        async for c in h.chunks():
            tokens.extend(c.token_ids)
        return tokens, h

    return asyncio.run(main())


def cut_second_rows(monkeypatch: pytest.MonkeyPatch, lm: LoadedModel, fail: bool) -> list[int]:
    """From now on, the second decode of image rows on `lm` fails (`fail`) or has the first
    request submitted hang up (seen at the next step: those rows still go in). Returns the
    rows of each decode, as they happen."""
    handles: list[RequestHandle] = []
    calls: list[int] = []
    real = scheduler.decode_rows

    def rows_then_cut(*args: Any, **kw: Any) -> None:
        calls.append(len(args[1]))
        if len(calls) == 2:
            if fail:
                raise RuntimeError("an injected decode failure")
            handles[0].cancel()
        real(*args, **kw)

    monkeypatch.setattr(scheduler, "decode_rows", rows_then_cut)
    submit = lm.submit
    monkeypatch.setattr(lm, "submit", lambda r: handles.append(submit(r)) or handles[-1])
    return calls
