"""Ollama's /api/chat, /api/generate and /api/embed: translations into the one engine path.

Chat goes through the same template rendering and tool handling as OpenAI chat
(daemon/api/openai/tools.py), sampling through `submit_choices`, `format` through the shared
schema grammar, embeddings through the OpenAI embeddings code.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import ValidationError

from daemon.api.choices import Extras, Policy, submit_choices
from daemon.api.formats import schema_grammar
from daemon.api.framing import NdjsonStream, ndjson
from daemon.api.keepalive import keep_alive_arg
from daemon.api.llamacpp.infill import infill_tokens
from daemon.api.ollama import errors
from daemon.api.ollama.protocol import (
    ChatRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Message,
    _Generating,
)
from daemon.api.openai import tools
from daemon.api.openai.embeddings import EmbeddingRequest, create_embeddings
from daemon.api.openai.protocol import ChatCompletionRequest, ChatMessage, FunctionCall, ToolCallIn
from daemon.api.streams import collect_all
from daemon.api.watch import leased
from daemon.engine.errors import UnknownModel
from daemon.engine.handle import RequestHandle
from daemon.engine.loaded import LoadedModel
from daemon.engine.registry import ModelRegistry
from daemon.engine.types import FinishReason
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


def _check_common(req: _Generating) -> None:
    if req.think:
        raise InvalidRequest('"model" does not support thinking', param="think")


def format_grammar(fmt: str | dict[str, Any] | None) -> str | None:
    """`format`: "json" is any JSON object, an object is a JSON schema, "" or null is free text."""
    if fmt is None or fmt == "":
        return None
    return schema_grammar(None if fmt == "json" else fmt, "format")  # type: ignore[arg-type]


def _submit(lm: LoadedModel, prompt: list[int], req: _Generating, policy: Policy) -> RequestHandle:
    """One engine request under the options' sampling and context bounds.

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
    grammar = format_grammar(req.format)
    fields = opts.sampling(n_ctx)
    fields.lora = req.lora
    (handle,) = submit_choices(
        lm, [prompt], min(limit, room), fields, 1, policy, Extras(grammar=grammar)
    )
    return handle


async def _load_only(
    registry: ModelRegistry, lm: LoadedModel, name: str, req: _Generating, key: str
) -> Body:
    """A request with nothing to generate loads the model, or unloads it with keep_alive 0."""
    reason = "load"
    if "keep_alive" in req.model_fields_set and req.keep_alive == 0:
        await registry.unload(lm.name)
        reason = "unload"
    empty: Any = {"role": "assistant", "content": ""} if key == "message" else ""
    return {
        "model": name,
        "created_at": created_at(),
        key: empty,
        "done": True,
        "done_reason": reason,
    }


# ---- /api/chat ----------------------------------------------------------------------------


def _openai_message(m: Message) -> ChatMessage:
    if m.images:
        raise InvalidRequest("images are not supported: edged serves text models", param="images")
    calls = [
        ToolCallIn(function=FunctionCall(name=c.function.name, arguments=c.function.arguments))
        for c in m.tool_calls or []
    ]
    return ChatMessage(
        role=m.role,
        content=m.content,
        name=m.tool_name if m.role == "tool" else None,
        tool_calls=calls or None,
    )


def _message(content: str | None, calls: list[tools.ToolCall]) -> Body:
    msg: Body = {"role": "assistant", "content": content or ""}
    if calls:
        msg["tool_calls"] = [
            {"function": {"index": i, "name": c.name, "arguments": json.loads(c.arguments)}}
            for i, c in enumerate(calls)
        ]
    return msg


async def chat(registry: ModelRegistry, req: ChatRequest, policy: Policy) -> Body | NdjsonStream:
    """POST /api/chat."""
    _check_common(req)
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    if not req.messages:
        return await _load_only(registry, lm, name, req, "message")
    oa = ChatCompletionRequest(
        messages=[_openai_message(m) for m in req.messages], tools=req.tools or None
    )
    plan = tools.plan_tools(oa, lm.template.source)
    messages, template_vars = tools.prompt_messages(oa.messages, plan, lm.template.source)
    prompt = lm.tokenize(lm.render_chat(messages, **template_vars))
    handle = _submit(lm, prompt, req, policy)
    if req.stream:
        return ndjson(_chat_events(handle, plan, name, clock), [handle], errors.body)
    (r,) = await collect_all([handle])
    content, calls = tools.parse_message(plan, r.text)
    return {
        "model": name,
        "created_at": created_at(),
        "message": _message(content, calls),
        "done": True,
        "done_reason": _done_reason(r.finish_reason),
        **_stats(handle, clock),
    }


async def _chat_events(
    handle: RequestHandle, plan: tools.ToolPlan | None, name: str, clock: Clock
) -> AsyncIterator[Body]:
    # Calls are sent whole when their markup closes, text as it comes (as on OpenAI chat).
    parser = tools.CallParser(plan)
    async for chunk in handle.chunks():
        events = parser.push(chunk.text)
        if chunk.finish_reason is not None:
            events += parser.finish()
        text = "".join(e for e in events if isinstance(e, str))
        calls = [e for e in events if isinstance(e, tools.ToolCall)]
        if text or calls:
            yield {
                "model": name,
                "created_at": created_at(),
                "message": _message(text, calls),
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


def _generate_prompt(lm: LoadedModel, req: GenerateRequest) -> list[int]:
    if req.images:
        raise InvalidRequest("images are not supported: edged serves text models", param="images")
    if req.template:
        raise InvalidRequest(
            "a per-request template is not supported; edged renders the model's own",
            param="template",
        )
    if req.raw and (req.system or req.suffix is not None):
        raise InvalidRequest("raw mode takes neither system nor suffix", param="raw")
    if req.suffix is not None:
        tokens = infill_tokens(lm, req.prompt, req.suffix, param="suffix")
    elif req.raw:
        tokens = lm.tokenize(req.prompt)
    else:
        msgs = [{"role": "system", "content": req.system}] if req.system else []
        msgs.append({"role": "user", "content": req.prompt})
        tokens = lm.tokenize(lm.render_chat(msgs))
    if req.context:
        lm.check_tokens(req.context, "context")
        # The context already began the sequence: no second BOS in the middle of it.
        if tokens and tokens[0] == lm.model.bos:
            tokens = tokens[1:]
        tokens = [*req.context, *tokens]
    lm.check_tokens(tokens)
    return tokens


async def generate(
    registry: ModelRegistry, req: GenerateRequest, policy: Policy
) -> Body | NdjsonStream:
    """POST /api/generate in Ollama's dialect (a body without `request_id`)."""
    _check_common(req)
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    if not req.prompt and req.suffix is None and not req.context:
        return await _load_only(registry, lm, name, req, "response")
    prompt = _generate_prompt(lm, req)
    handle = _submit(lm, prompt, req, policy)
    if req.stream:
        return ndjson(_generate_events(handle, prompt, name, clock), [handle], errors.body)
    (r,) = await collect_all([handle])
    return {
        "model": name,
        "created_at": created_at(),
        "response": r.text,
        "done": True,
        "done_reason": _done_reason(r.finish_reason),
        "context": [*prompt, *r.token_ids],
        **_stats(handle, clock),
    }


async def _generate_events(
    handle: RequestHandle, prompt: list[int], name: str, clock: Clock
) -> AsyncIterator[Body]:
    generated: list[int] = []
    async for chunk in handle.chunks():
        generated.extend(chunk.token_ids)
        if chunk.text:
            yield {"model": name, "created_at": created_at(), "response": chunk.text, "done": False}
        if chunk.finish_reason is not None:
            yield {
                "model": name,
                "created_at": created_at(),
                "response": "",
                "done": True,
                "done_reason": _done_reason(chunk.finish_reason),
                "context": [*prompt, *generated],
                **_stats(handle, clock),
            }


# ---- /api/embed, /api/embeddings ----------------------------------------------------------


async def _vectors(
    registry: ModelRegistry, model: str | None, inputs: list[str], dimensions: int | None
) -> tuple[list[Any], int]:
    if any(not s for s in inputs):
        raise InvalidRequest("inputs must not be empty strings", param="input")
    try:
        oa = EmbeddingRequest(model=model, input=inputs, dimensions=dimensions)
    except ValidationError as exc:
        raise InvalidRequest(errors.pydantic_message(exc), param="input") from exc
    out = await create_embeddings(registry, oa)
    return [d["embedding"] for d in out["data"]], out["usage"]["prompt_tokens"]


async def embed(registry: ModelRegistry, req: EmbedRequest) -> Body:
    """POST /api/embed: L2-normalized vectors, one per input.

    Inputs longer than the model's context are refused (400) whatever `truncate` says.
    """
    lm, name, clock = await load(registry, req.model, req.model_fields_set, req.keep_alive)
    inputs = [req.input] if isinstance(req.input, str) else req.input
    vectors, n_tokens = (
        await _vectors(registry, lm.name, inputs, req.dimensions) if inputs else ([], 0)
    )
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
    vectors, _ = await _vectors(registry, lm.name, [req.prompt], None)
    return {"embedding": vectors[0]}
