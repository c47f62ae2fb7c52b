"""OpenAI chat and text completions: translate to engine requests and back."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.choices import Limits, submit_choices
from daemon.api.openai.protocol import ChatCompletionRequest, CompletionRequest
from daemon.api.streams import collect_all, merge, sse
from daemon.engine.loaded import LoadedModel
from daemon.engine.registry import ModelRegistry
from daemon.engine.scheduler import RequestHandle
from daemon.engine.types import FinishReason


@dataclass(frozen=True)
class _Meta:
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
            "choices": choices,
        }


def _meta(prefix: str, obj: str, model: str) -> _Meta:
    return _Meta(f"{prefix}-{uuid.uuid4().hex}", int(time.time()), model, obj)


def _finish(reason: FinishReason | None) -> str | None:
    return None if reason is None else reason.value


def _usage(handles: list[RequestHandle]) -> dict[str, int]:
    prompt = sum(h.usage.prompt_tokens for h in handles)
    completion = sum(h.usage.completion_tokens for h in handles)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def chat_completion(
    registry: ModelRegistry, req: ChatCompletionRequest, limits: Limits
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/chat/completions."""
    lm = await registry.get(req.model)
    prompt = lm.tokenize(lm.render_chat([m.for_template() for m in req.messages]))
    handles = submit_choices(lm, [prompt], req.token_limit, req, req.n, limits)
    meta = _meta("chatcmpl", "chat.completion", req.model or lm.name)
    if req.stream:
        chunk_meta = _Meta(meta.id, meta.created, meta.model, "chat.completion.chunk")
        return sse(_chat_events(chunk_meta, handles, req.include_usage), handles)
    results = await collect_all(handles)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": r.text},
            "logprobs": None,
            "finish_reason": _finish(r.finish_reason),
        }
        for i, r in enumerate(results)
    ]
    return {**meta.envelope(choices), "usage": _usage(handles)}


async def _chat_events(
    meta: _Meta, handles: list[RequestHandle], include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    role = {"role": "assistant", "content": ""}
    yield meta.envelope(
        [
            {"index": i, "delta": role, "logprobs": None, "finish_reason": None}
            for i in range(len(handles))
        ]
    )
    async for i, chunk in merge(handles):
        if chunk.text:
            delta = {
                "index": i,
                "delta": {"content": chunk.text},
                "logprobs": None,
                "finish_reason": None,
            }
            yield meta.envelope([delta])
        if chunk.finish_reason is not None:
            yield meta.envelope(
                [
                    {
                        "index": i,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": _finish(chunk.finish_reason),
                    }
                ]
            )
    if include_usage:
        yield {**meta.envelope([]), "usage": _usage(handles)}


def _completion_prompts(lm: LoadedModel, req: CompletionRequest) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        prompts = [lm.tokenize(p)]
    elif all(isinstance(x, int) for x in p):
        prompts = [list(p)]  # type: ignore[arg-type]
    elif all(isinstance(x, str) for x in p):
        prompts = [lm.tokenize(s) for s in p]  # type: ignore[arg-type]
    else:
        prompts = [list(x) for x in p]  # type: ignore[union-attr]
    for tokens in prompts:
        lm.check_tokens(tokens)
    return prompts


async def completion(
    registry: ModelRegistry, req: CompletionRequest, limits: Limits
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/completions."""
    lm = await registry.get(req.model)
    prompts = _completion_prompts(lm, req)
    handles = submit_choices(lm, prompts, req.token_limit, req, req.n, limits)
    meta = _meta("cmpl", "text_completion", req.model or lm.name)
    if req.stream:
        return sse(_completion_events(meta, handles, req.include_usage), handles)
    results = await collect_all(handles)
    choices = [
        {"index": i, "text": r.text, "logprobs": None, "finish_reason": _finish(r.finish_reason)}
        for i, r in enumerate(results)
    ]
    return {**meta.envelope(choices), "usage": _usage(handles)}


async def _completion_events(
    meta: _Meta, handles: list[RequestHandle], include_usage: bool
) -> AsyncIterator[dict[str, Any]]:
    async for i, chunk in merge(handles):
        if chunk.text or chunk.finish_reason is not None:
            yield meta.envelope(
                [
                    {
                        "index": i,
                        "text": chunk.text,
                        "logprobs": None,
                        "finish_reason": _finish(chunk.finish_reason),
                    }
                ]
            )
    if include_usage:
        yield {**meta.envelope([]), "usage": _usage(handles)}
