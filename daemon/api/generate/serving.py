"""`/api/generate(-batch)`: generations keyed by request_id, continued from their kept KV state."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar.response import Stream

from daemon.api.choices import Policy
from daemon.api.errors import to_api
from daemon.api.generate.protocol import GenerateBatchRequest, GenerateRequest, GenerationConfig
from daemon.api.keepalive import keep_alive_arg
from daemon.api.lora import LoraRef, request_adapters
from daemon.api.streams import collect
from daemon.api.watch import leased, watched
from daemon.config import GenerationDefaults
from daemon.engine.cache import StoreKey
from daemon.engine.client import EngineClient
from daemon.engine.handle import RequestHandle
from daemon.engine.loaded import LoadedModel
from daemon.engine.lora import describe
from daemon.engine.registry import ModelRegistry
from daemon.engine.types import BeamParams, GenerationRequest, SamplingParams
from daemon.errors import EdgedError, InvalidRequest, NotFound


@dataclass
class Started:
    """A generation in flight under a request_id, with the text that came before it."""

    key: StoreKey
    handle: RequestHandle
    history_text: str


def _engine_request(
    lm: LoadedModel,
    history: list[int],
    cfg: GenerationDefaults,
    limits: Policy,
) -> tuple[int, SamplingParams, BeamParams | None]:
    if cfg.max_new_tokens > limits.max_tokens:
        raise InvalidRequest(
            f"max_new_tokens must be at most {limits.max_tokens}",
            param="generation_config.max_new_tokens",
        )
    max_beams = min(limits.max_beams, lm.generator().n_slots)
    if cfg.num_beams > max_beams:
        raise InvalidRequest(
            f"num_beams must be at most {max_beams}", param="generation_config.num_beams"
        )
    max_new = lm.fit(history, cfg.max_new_tokens)
    sampling = SamplingParams(
        temperature=cfg.temperature if cfg.do_sample else 0.0,
        top_p=cfg.top_p,
        top_k=cfg.top_k,
        repetition_penalty=cfg.repetition_penalty,
    )
    beams = (
        BeamParams(cfg.num_beams, cfg.length_penalty, cfg.do_sample) if cfg.num_beams > 1 else None
    )
    return max_new, sampling, beams


def start(
    lm: LoadedModel,
    owner: str,
    request_id: str,
    prompt: str | None,
    cfg: GenerationDefaults,
    limits: Policy,
    lora: list[LoraRef] | None = None,
) -> Started:
    """Claim the request_id, then continue its kept sequence or start from `prompt`."""
    key = (owner, request_id)
    adapters = request_adapters(lm, lora)
    saved = lm.store.claim(key)
    try:
        if saved is not None and saved.lora != adapters:
            # Its KV was computed under other adapters: continuing would mix two models.
            raise InvalidRequest(
                f"request_id {request_id!r} was generated with LoRA {describe(saved.lora)}; "
                f"continue it with the same adapters (not {describe(adapters)}) or delete it",
                param="lora",
            )
        if saved is not None:
            history = list(saved.tokens + saved.pending)
            tokens: list[int] = []
        elif prompt is None:
            # Unknown here also means expired, or evicted by the store's bounds (a state
            # larger than the key's share is never kept): say so, the client cannot tell.
            raise InvalidRequest(
                f"nothing is kept under request_id {request_id!r} (new, deleted, expired or "
                "evicted by the store's bounds): a prompt is required to start it",
                param="prompt",
            )
        else:
            tokens = lm.tokenize(prompt)
            lm.check_tokens(tokens)
            history = tokens
        max_new, sampling, beams = _engine_request(lm, history, cfg, limits)
        request = GenerationRequest(
            tokens,
            max_new,
            sampling,
            beams=beams,
            resume=saved,
            keep=True,
            owner=owner,
            lora=adapters,
        )
        handle = lm.submit(request)
    except BaseException:
        lm.store.release(key, None)
        raise
    # The id is released when the ENGINE is done (not when a timeout or hang-up lets the
    # reader go), with exactly what this request's own slot holds.
    store = lm.store
    handle.add_done_callback(lambda h: store.release(key, h.saved))
    text = lm.model.detokenize(history, special=True)
    if saved is not None and saved.tail and text.endswith("\ufffd"):
        text = text[:-1]  # the cut character's bytes open this call's text instead
    return Started(key, handle, text)


def _config(cfg: GenerationConfig | None, defaults: GenerationDefaults) -> GenerationDefaults:
    return cfg.resolve(defaults) if cfg is not None else defaults


async def generate(
    registry: ModelRegistry,
    req: GenerateRequest,
    owner: str,
    defaults: GenerationDefaults,
    limits: Policy,
) -> Stream | str:
    """POST /api/generate: the text, streamed in chunks or whole."""
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    cfg = _config(req.generation_config, defaults)
    started = start(lm, owner, req.request_id, req.prompt, cfg, limits, req.lora)
    prefix = "" if req.only_new_tokens else started.history_text
    if req.stream_response:
        return Stream(_text_stream(started, prefix), media_type="text/plain")
    result = await collect(started.handle)
    return prefix + result.text


class StreamAborted(Exception):
    """Raised inside a plain-text stream after its error line: the transfer is cut short."""


async def _text_stream(started: Started, prefix: str) -> AsyncIterator[str]:
    """The plain-text body. A failure mid-stream (timeout, drain, engine error) ends it with
    a last line `[edged error: <code>: <message>]` and then aborts the chunked transfer, so
    a client sees an incomplete response rather than a silently short text."""
    try:
        with watched([started.handle]):
            if prefix:
                yield prefix
            async for chunk in started.handle.chunks():
                if chunk.text:
                    yield chunk.text
    except EdgedError as exc:
        exc = to_api(exc, "/api/generate")
        yield f"\n[edged error: {exc.code or exc.error_type}: {exc.message}]\n"
        raise StreamAborted(exc.message) from exc
    finally:
        started.handle.cancel()


async def forget(registry: ModelRegistry, owner: str, request_id: str) -> None:
    """DELETE /api/generate/{request_id}: drop the caller's entry under every model."""
    found = False
    for store in EngineClient(registry).stores().values():
        found = store.delete((owner, request_id)) or found
    if not found:
        raise NotFound(f"no kept generation under request_id {request_id!r}")


async def generate_batch(
    registry: ModelRegistry,
    req: GenerateBatchRequest,
    owner: str,
    defaults: GenerationDefaults,
    limits: Policy,
) -> list[dict[str, Any]]:
    """POST /api/generate-batch: every prompt through the engine together, answers in order."""
    if len(req.prompts) > limits.max_batch:
        raise InvalidRequest(f"at most {limits.max_batch} prompts per batch", param="prompts")
    ids = [p.request_id for p in req.prompts]
    if len(set(ids)) != len(ids):
        raise InvalidRequest("request_ids in one batch must be distinct", param="prompts")
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    cfg = _config(req.generation_config, defaults)
    started: list[Started] = []
    try:
        for p in req.prompts:
            started.append(start(lm, owner, p.request_id, p.prompt, cfg, limits, req.lora))
        results = await asyncio.gather(*(collect(s.handle) for s in started))
    finally:
        for s in started:
            s.handle.cancel()
    out: list[dict[str, Any]] = []
    for s, r in zip(started, results, strict=True):
        item: dict[str, Any] = {"request_id": s.key[1]}
        if not req.only_new_tokens:
            item["prompt"] = s.history_text
        item["response"] = r.text
        out.append(item)
    return out
