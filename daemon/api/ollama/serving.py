"""Ollama's /api/chat, /api/generate and /api/embed: translations into the core.

Chat goes through the core's chat request (template rendering, tools, formats, thinking),
sampling through the core's one mapping (llama.cpp's names), embeddings through the core's.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from daemon.api.framing import NdjsonStream, ndjson
from daemon.api.keepalive import keep_alive_arg
from daemon.api.messages import core_functions
from daemon.api.ollama import errors
from daemon.api.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
    _Generating,
)
from daemon.core import embeddings as vectors_of
from daemon.core import request as core
from daemon.core.calls import ToolCall, parse_message
from daemon.core.choices import Extras, Policy, submit_choices
from daemon.core.formats import request_grammar
from daemon.core.infill import infill_tokens
from daemon.core.media import check_media, image_from_base64
from daemon.core.prompt import prepare_chat
from daemon.core.reasoning import ReasoningSplitter, Thinking, detect
from daemon.core.sampling import LLAMA_CPP, sampling_of
from daemon.core.streams import collect_all
from daemon.core.tools import ToolPlan
from daemon.core.turns import Reasoning, TurnParser
from daemon.core.watch import leased
from daemon.engine.errors import UnknownModel
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.media import MediaPrompt
from daemon.engine.types import Chunk, FinishReason
from daemon.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound

Body = dict[str, Any]


def created_at() -> str:
    """Ollama's timestamp: RFC 3339 in UTC."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _ns(seconds: float) -> int:
    return max(0, int(seconds * 1e9))


def resolve_name(registry: ModelRegistry, name: str | None) -> str | None:
    """A servable name for an Ollama model reference: `x:latest` is `x`, as Ollama tags go."""
    if name is None:
        return None
    try:
        registry.resolve(name)
        return name
    except UnknownModel:
        base, _, tag = name.rpartition(":")
        if base and tag == "latest":
            try:
                registry.resolve(base)
                return base
            except UnknownModel:
                pass
    raise ModelNotFound(f'model "{name}" not found, try pulling it first', param="model")


@dataclass
class Clock:
    """When the request started and how long its model took to load."""

    start: float
    load: float = 0.0


async def load(
    registry: ModelRegistry, name: str | None, fields_set: set[str], keep_alive: float | None
) -> tuple[LoadedModel, str, Clock]:
    """The model a request names (loading it), the name to report, and the request clock."""
    clock = Clock(time.monotonic())
    resolved = resolve_name(registry, name)
    lm = await leased(registry, resolved, keep_alive_arg(fields_set, keep_alive))
    clock.load = time.monotonic() - clock.start
    return lm, name or lm.name, clock


def _stats(handle: RequestHandle, clock: Clock) -> Body:
    """Ollama's counters; durations are wall-clock nanoseconds (prompt eval includes queueing)."""
    end = time.monotonic()
    first = handle.first_token_at or end
    return {
        "total_duration": _ns(end - clock.start),
        "load_duration": _ns(clock.load),
        "prompt_eval_count": handle.usage.prompt_tokens,
        "prompt_eval_duration": _ns(first - handle.submitted_at),
        "eval_count": handle.usage.completion_tokens,
        "eval_duration": _ns(end - first),
    }


def _done_reason(reason: FinishReason | None) -> str:
    return "length" if reason is FinishReason.LENGTH else "stop"


def _thinking(lm: LoadedModel, name: str, req: _Generating) -> dict[str, Any]:
    """`think` as template variables; a model whose template does not think refuses `true`."""
    if req.think is None:
        return {}
    if req.think and detect(lm.template.source) is None:
        raise InvalidRequest(f'"{name}" does not support thinking', param="think")
    effort = req.think if isinstance(req.think, str) else None
    return {"enable_thinking": bool(req.think)} | ({"reasoning_effort": effort} if effort else {})


def _split_of(lm: LoadedModel, rendered: str, req: _Generating) -> Thinking | None:
    """How the output splits: not at all with `think: false` (the text stays as written),
    answer only under a `format` (the JSON is constrained from its first token)."""
    if req.think is False:
        return None
    think = Thinking.of(lm.template.source, rendered)
    return think.answer_only() if think is not None and req.format else think


def _format(fmt: str | dict[str, Any] | None) -> core.JsonFormat | None:
    """`format`: "json" is any JSON object, an object is a JSON schema, "" or null is free text."""
    if fmt is None or fmt == "":
        return None
    return core.JsonFormat(None if fmt == "json" else fmt)  # type: ignore[arg-type]


def format_grammar(fmt: str | dict[str, Any] | None) -> str | None:
    """The grammar of `format` (None for free text)."""
    return request_grammar(_format(fmt), None, "format")


def _submit(
    lm: LoadedModel,
    prompt: list[int],
    req: _Generating,
    policy: Policy,
    extras: Extras,
) -> RequestHandle:
    """One engine request under the options' sampling and context bounds, with the prompt's
    extras (the format's grammar, or a chat's lazy call grammar; its images).

    `num_ctx` above the model's context is clamped to it; below it, it bounds prompt plus
    output. `num_predict` -1/-2 (or unset) means: until the context is full (or the cap).
    """
    opts = req.options
    n_ctx = lm.ctx_size if opts.num_ctx is None else min(opts.num_ctx, lm.ctx_size)
    room = n_ctx - len(prompt)
    if room <= 0:
        raise ContextLengthExceeded(
            f"the prompt has {len(prompt)} tokens; the context is {n_ctx}", param="num_ctx"
        )
    # "Until the context is full" is still bounded by the daemon's cap on output tokens.
    unbounded = opts.num_predict is None or opts.num_predict < 0
    limit = min(room, policy.max_tokens) if unbounded else opts.num_predict
    sampling = sampling_of(opts, LLAMA_CPP, n_ctx=n_ctx, lora=req.lora)
    (handle,) = submit_choices(lm, [prompt], min(limit, room), sampling, 1, policy, extras)
    return handle


async def _load_only(
    registry: ModelRegistry, lm: LoadedModel, name: str, req: _Generating, key: str
) -> Body:
    """A request with nothing to generate loads the model, or unloads it with keep_alive 0:
    never the default model, which stays loaded (a client must not take the daemon's
    /health to 503, and out of a load balancer, with one request)."""
    reason = "load"
    if (
        "keep_alive" in req.model_fields_set
        and req.keep_alive == 0
        and lm.name != registry.default_name
    ):
        reason = "unload"
        # This request holds one lease; with others running, keep_alive 0 (already set for
        # the model) unloads it once they end: never under another request's lease.
        if registry.leases(lm.name) <= 1 and lm.worker.outstanding == 0:
            await registry.unload(lm.name)
    empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    return {
        "model": name,
        "created_at": created_at(),
        key: empty,
        "done": True,
        "done_reason": reason,
    }


# ---- /api/chat ----------------------------------------------------------------------------


def _core_message(m: Message) -> core.Message:
    thinking = m.thinking if m.role == "assistant" and m.thinking else None
    calls = tuple(core.CallIn(c.function.name, c.function.arguments) for c in m.tool_calls or [])
    # Ollama's images are base64 files without a type, placed before the message's text.
    media = tuple(image_from_base64(b, None, "images") for b in m.images or ())
    return core.Message(
        role=m.role,
        content=core.MEDIA_MARKER * len(media) + m.content,
        media=media,
        name=m.tool_name if m.role == "tool" else None,
        calls=calls,
        reasoning=thinking,
    )


def _message(content: str | None, calls: list[ToolCall], thinking: str | None = None) -> Body:
    msg: Body = {"role": "assistant", "content": content or ""}
    if thinking:
        msg["thinking"] = thinking
    if calls:
        msg["tool_calls"] = [
            {"function": {"index": i, "name": c.name, "arguments": json.loads(c.arguments)}}
            for i, c in enumerate(calls)
        ]
    return msg


async def chat(registry: ModelRegistry, req: ChatRequest, policy: Policy) -> Body | NdjsonStream:
    """POST /api/chat."""
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    think_vars = _thinking(lm, name, req)
    if not req.messages:
        return await _load_only(registry, lm, name, req, "message")
    chat_req = core.ChatRequest(
        messages=tuple(_core_message(m) for m in req.messages),
        tools=core_functions(req.tools),
        format=_format(req.format),
        template_kwargs=think_vars,
        format_param="format",
    )
    check_media(chat_req, policy, "images")
    chat = await prepare_chat(lm, chat_req, policy.max_image_pixels, "images")
    # `think: false` leaves the text as the model wrote it, thinking tags and all.
    plan, think = chat.plan, None if req.think is False else chat.think
    handle = _submit(lm, chat.tokens, req, policy, chat.extras)
    if req.stream:
        return ndjson(_chat_events(handle, plan, name, clock, think), [handle], errors.SHAPE.wire)
    (r,) = await collect_all([handle])
    thinking, text = think.split(r.text) if think is not None else (None, r.text)
    content, calls = parse_message(plan, text)
    return {
        "model": name,
        "created_at": created_at(),
        "message": _message(content, calls, thinking),
        "done": True,
        "done_reason": _done_reason(r.finish_reason),
        **_stats(handle, clock),
    }


def _pieces(splitter: ReasoningSplitter | None, chunk: Chunk) -> tuple[str, str]:
    """A chunk's (thinking, answer) text; the held-back rest comes with the last chunk."""
    if splitter is None:
        return "", chunk.text
    thinking, text = splitter.feed(chunk.text)
    if chunk.finish_reason is not None:
        more_thinking, more_text = splitter.flush()
        thinking, text = thinking + more_thinking, text + more_text
    return thinking, text


async def _chat_events(
    handle: RequestHandle,
    plan: ToolPlan | None,
    name: str,
    clock: Clock,
    think: Thinking | None = None,
) -> AsyncIterator[Body]:
    # Calls are sent whole when their markup closes, text as it comes (as on OpenAI chat);
    # thinking is split off first, and calls are parsed in the answer only.
    parser = TurnParser(plan, think)
    async for chunk in handle.chunks():
        events = parser.push(chunk.text)
        if chunk.finish_reason is not None:
            events += parser.finish()
        thinking = "".join(e.text for e in events if isinstance(e, Reasoning))
        text = "".join(e for e in events if isinstance(e, str))
        calls = [e for e in events if isinstance(e, ToolCall)]
        if text or calls or thinking:
            yield {
                "model": name,
                "created_at": created_at(),
                "message": _message(text, calls, thinking),
                "done": False,
            }
        if chunk.finish_reason is not None:
            yield {
                "model": name,
                "created_at": created_at(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": _done_reason(chunk.finish_reason),
                **_stats(handle, clock),
            }


# ---- /api/generate ------------------------------------------------------------------------


def _generate_prompt(
    lm: LoadedModel, req: GenerateRequest, think_vars: dict[str, Any]
) -> tuple[list[int], str]:
    """The prompt tokens, and the rendered text ("" for raw prompts, which never split)."""
    if req.template:
        raise InvalidRequest(
            "a per-request template is not supported; edged renders the model's own",
            param="template",
        )
    if req.raw and (req.system or req.suffix is not None):
        raise InvalidRequest("raw mode takes neither system nor suffix", param="raw")
    rendered = ""
    if req.suffix is not None:
        tokens = infill_tokens(lm, req.prompt, req.suffix, param="suffix")
    elif req.raw:
        tokens = lm.tokenize(req.prompt)
    else:
        msgs = [{"role": "system", "content": req.system}] if req.system else []
        msgs.append({"role": "user", "content": req.prompt})
        rendered = lm.render_chat(msgs, **think_vars)
        tokens = lm.tokenize(rendered)
    if req.context:
        lm.check_tokens(req.context, "context")
        # The context already began the sequence: no second BOS in the middle of it.
        if tokens and tokens[0] == lm.model.bos:
            tokens = tokens[1:]
        tokens = [*req.context, *tokens]
    lm.check_tokens(tokens)
    return tokens, rendered


async def _image_prompt(
    lm: LoadedModel, req: GenerateRequest, think_vars: dict[str, Any], policy: Policy
) -> tuple[list[int], str, MediaPrompt | None]:
    """A templated prompt whose user turn carries `images` (before its text, as on
    /api/chat): tokens with the images' stand-ins, the rendered text, the embeddings."""
    for field, given in (("raw", req.raw), ("suffix", req.suffix is not None)):
        if given:
            raise InvalidRequest(f"images need the model's template; {field} has none", param=field)
    if req.context:
        # The images' positions are no token ids a client could send back.
        raise InvalidRequest("a context cannot be continued with images", param="context")
    media = tuple(image_from_base64(b, None, "images") for b in req.images or ())
    system = (core.Message(role="system", content=req.system),) if req.system else ()
    text = core.MEDIA_MARKER * len(media) + req.prompt
    user = core.Message(role="user", content=text, media=media)
    chat_req = core.ChatRequest(messages=(*system, user), template_kwargs=think_vars)
    check_media(chat_req, policy, "images")
    chat = await prepare_chat(lm, chat_req, policy.max_image_pixels, "images")
    return chat.tokens, chat.rendered, chat.extras.media


async def generate(
    registry: ModelRegistry, req: GenerateRequest, policy: Policy
) -> Body | NdjsonStream:
    """POST /api/generate in Ollama's dialect (a body without `request_id`)."""
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    think_vars = _thinking(lm, name, req)  # refuses `think` before any prompt is looked at
    if not req.prompt and req.suffix is None and not req.context:
        return await _load_only(registry, lm, name, req, "response")
    media = None
    if req.images:
        prompt, rendered, media = await _image_prompt(lm, req, think_vars, policy)
    else:
        prompt, rendered = _generate_prompt(lm, req, think_vars)
    think = _split_of(lm, rendered, req) if rendered else None
    handle = _submit(lm, prompt, req, policy, Extras(format_grammar(req.format), media=media))
    # An image prompt's context would hold the images' stand-ins, which no later request
    # may send: it has none (Ollama's clients treat `context` as optional).
    context = prompt if media is None else None
    if req.stream:
        events = _generate_events(handle, context, name, clock, think)
        return ndjson(events, [handle], errors.SHAPE.wire)
    (r,) = await collect_all([handle])
    thinking, text = think.split(r.text) if think is not None else (None, r.text)
    return {
        "model": name,
        "created_at": created_at(),
        "response": text,
        **({"thinking": thinking} if thinking else {}),
        "done": True,
        "done_reason": _done_reason(r.finish_reason),
        **({"context": [*context, *r.token_ids]} if context is not None else {}),
        **_stats(handle, clock),
    }


async def _generate_events(
    handle: RequestHandle,
    prompt: list[int] | None,
    name: str,
    clock: Clock,
    think: Thinking | None = None,
) -> AsyncIterator[Body]:
    generated: list[int] = []
    splitter = think.splitter() if think is not None else None
    async for chunk in handle.chunks():
        generated.extend(chunk.token_ids)
        thinking, text = _pieces(splitter, chunk)
        if text or thinking:
            body = {"model": name, "created_at": created_at(), "response": text, "done": False}
            yield body | ({"thinking": thinking} if thinking else {})
        if chunk.finish_reason is not None:
            yield {
                "model": name,
                "created_at": created_at(),
                "response": "",
                "done": True,
                "done_reason": _done_reason(chunk.finish_reason),
                **({"context": [*prompt, *generated]} if prompt is not None else {}),
                **_stats(handle, clock),
            }


# ---- /api/embed, /api/embeddings ----------------------------------------------------------


async def _vectors(
    lm: LoadedModel, inputs: list[str], dimensions: int | None
) -> tuple[list[Any], int]:
    if any(not s for s in inputs):
        raise InvalidRequest("inputs must not be empty strings", param="input")
    vectors_of.embedder_of(lm)
    tokens = [vectors_of.text_tokens(lm, s) for s in inputs]
    vectors = await vectors_of.embed(lm, tokens, dimensions)
    return [v.astype(np.float32).tolist() for v in vectors], sum(len(t) for t in tokens)


async def embed(registry: ModelRegistry, req: EmbedRequest) -> Body:
    """POST /api/embed: L2-normalized vectors, one per input.

    Inputs longer than the model's context are refused (400) whatever `truncate` says.
    """
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    vectors, n_tokens = await _vectors(lm, inputs, req.dimensions) if inputs else ([], 0)
    return {
        "model": name,
        "embeddings": vectors,
        "total_duration": _ns(time.monotonic() - clock.start),
        "load_duration": _ns(clock.load),
        "prompt_eval_count": n_tokens,
    }


async def embeddings(registry: ModelRegistry, req: EmbeddingsRequest) -> Body:
    """POST /api/embeddings: the legacy form, one prompt, one vector."""
    lm, _name, _clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    if not req.prompt:
        return {"embedding": []}
    vectors, _ = await _vectors(lm, [req.prompt], None)
    return {"embedding": vectors[0]}
