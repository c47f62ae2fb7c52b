"""Anthropic Messages: translate into the shared chat path, answer in Anthropic's shapes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import ServerSentEvent
from pydantic import ValidationError

from daemon.api.anthropic.errors import error_event
from daemon.api.anthropic.protocol import (
    Block,
    CountTokensRequest,
    MessagesRequest,
    _Conversation,
)
from daemon.api.keepalive import keep_alive_arg
from daemon.api.openai.protocol import ChatCompletionRequest
from daemon.api.streams import Named, named_sse
from daemon.core.choices import Policy, submit_choices
from daemon.core.prompt import Reasoning, Turn, TurnEnd, build_chat, run_turn, turn_events
from daemon.core.reasoning import Thinking
from daemon.core.tools import ToolCall
from daemon.core.watch import leased
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import FinishReason
from daemon.errors import InvalidRequest

_TEXT_ONLY = "edged's models read text only"


def _result_text(block: Block, where: str) -> str:
    """A tool_result's content as text (an error result says so)."""
    content = block.content
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for b in content:
            if b.type != "text" or b.text is None:
                raise InvalidRequest(
                    f"{where}: tool_result content may hold text blocks only; {_TEXT_ONLY}",
                    param="messages",
                )
            parts.append(b.text)
        text = "\n\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def _turn(role: str, blocks: list[Block], i: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results first, then the turn itself."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for k, b in enumerate(blocks):
        where = f"messages[{i}].content[{k}]"
        if b.type == "text" and b.text is not None:
            texts.append(b.text)
        elif b.type == "thinking" and role == "assistant" and b.thinking is not None:
            # The signature is not checked: edged's own is a digest, not a secret.
            thoughts.append(b.thinking)
        elif b.type == "redacted_thinking" and role == "assistant":
            pass  # opaque to edged (it never writes one): nothing to render
        elif b.type == "tool_use" and role == "assistant" and b.id and b.name:
            args = b.input if b.input is not None else {}
            calls.append(
                {"id": b.id, "type": "function", "function": {"name": b.name, "arguments": args}}
            )
        elif b.type == "tool_result" and role == "user" and b.tool_use_id:
            results.append(
                {"role": "tool", "tool_call_id": b.tool_use_id, "content": _result_text(b, where)}
            )
        elif b.type in ("image", "document"):
            raise InvalidRequest(
                f"{where}: {b.type} blocks are not supported; {_TEXT_ONLY}", param="messages"
            )
        elif b.type in ("text", "tool_use", "tool_result", "thinking", "redacted_thinking"):
            raise InvalidRequest(
                f"{where}: a {b.type} block is missing members or is in a {role} turn",
                param="messages",
            )
        else:
            raise InvalidRequest(
                f"{where}: content blocks of type `{b.type}` are not supported", param="messages"
            )
    out = results
    if texts or calls or thoughts or not results:
        msg: dict[str, Any] = {"role": role, "content": "\n\n".join(texts)}
        if calls:
            msg["tool_calls"] = calls
        if thoughts:
            msg["reasoning_content"] = "\n\n".join(thoughts)
        out = [*out, msg]
    return out


def _tool_choice(req: _Conversation) -> tuple[Any, bool]:
    choice = req.tool_choice
    if choice is None:
        return None, True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type `tool` needs a name", param="tool_choice")
        return {"type": "function", "function": {"name": choice.name}}, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def to_chat(req: _Conversation) -> ChatCompletionRequest:
    """The Anthropic conversation as the chat request every dialect renders through."""
    out = req.output_config
    messages: list[dict[str, Any]] = []
    system = req.system_text()
    if system:
        messages.append({"role": "system", "content": system})
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            messages.append({"role": m.role, "content": m.content})
        else:
            messages.extend(_turn(m.role, m.content, i))
    tools = []
    for t in req.tools or []:
        if t.type not in (None, "custom"):
            raise InvalidRequest(
                f"server tool `{t.type}` is not supported; declare client tools with "
                "name and input_schema",
                param="tools",
            )
        fn = {"name": t.name, "description": t.description, "parameters": t.input_schema}
        tools.append({"type": "function", "function": fn})
    choice, parallel = _tool_choice(req)
    body: dict[str, Any] = {
        "messages": messages,
        "tools": tools or None,
        "tool_choice": choice,
        "parallel_tool_calls": parallel,
    }
    # Thinking reaches a reasoning template as `enable_thinking` (absent: the template's
    # default) and effort as `reasoning_effort`; other templates ignore both.
    if req.thinking is not None:
        body["chat_template_kwargs"] = {"enable_thinking": req.thinking.type != "disabled"}
    if out is not None and out.effort is not None:
        body["reasoning_effort"] = "high" if out.effort == "max" else out.effort
    if out is not None and out.format is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"schema": out.format.schema_},
        }
    if isinstance(req, MessagesRequest):
        body.update(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            stop=req.stop_sequences,
            lora=req.lora,
        )
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidRequest(f"{'.'.join(map(str, err['loc']))}: {err['msg']}") from exc


def _stop_reason(end: TurnEnd) -> str:
    if end.calls and end.reason is FinishReason.STOP:
        return "tool_use"
    if end.reason is FinishReason.LENGTH:
        return "max_tokens"
    return "stop_sequence" if end.stop_sequence is not None else "end_turn"


def _tool_use(call: ToolCall) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": "toolu_" + call.id.removeprefix("call_"),
        "name": call.name,
        "input": json.loads(call.arguments),
    }


def _head(msg_id: str, model: str) -> dict[str, Any]:
    return {"id": msg_id, "type": "message", "role": "assistant", "model": model}


def signature(thinking: str) -> str:
    """What edged puts in a thinking block's `signature`: a digest of the text, not a secret
    (edged does not check signatures sent back; it only makes edits visible)."""
    return "edged-sha256:" + hashlib.sha256(thinking.encode()).hexdigest()


def _thinking(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": signature(text)}


def _message(msg_id: str, model: str, turn: Turn, handle: RequestHandle) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if turn.reasoning is not None:
        content.append(_thinking(turn.reasoning))
    if turn.content or not turn.calls:
        content.append({"type": "text", "text": turn.content})
    content += [_tool_use(c) for c in turn.calls]
    return {
        **_head(msg_id, model),
        "content": content,
        "stop_reason": _stop_reason(turn.end),
        "stop_sequence": turn.end.stop_sequence,
        "usage": {
            "input_tokens": handle.usage.prompt_tokens,
            "output_tokens": handle.usage.completion_tokens,
        },
    }


async def _events(
    lm: LoadedModel,
    msg_id: str,
    model: str,
    handle: RequestHandle,
    plan: Any,
    think: Thinking | None = None,
    budget: int | None = None,
) -> AsyncIterator[Named]:
    start = {
        **_head(msg_id, model),
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": handle.usage.prompt_tokens, "output_tokens": 0},
    }
    yield "message_start", {"type": "message_start", "message": start}
    yield "ping", {"type": "ping"}
    index, text_open = -1, False
    thoughts: list[str] | None = None  # the open thinking block's text so far

    def stop() -> Named:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    def close_thinking() -> list[Named]:
        nonlocal thoughts
        assert thoughts is not None
        sig = {"type": "signature_delta", "signature": signature("".join(thoughts))}
        thoughts = None
        return [("content_block_delta", _delta(index, sig)), stop()]

    async for ev in turn_events(lm, handle, plan, think, budget):
        if thoughts is not None and not isinstance(ev, Reasoning):
            for e in close_thinking():
                yield e
        if isinstance(ev, Reasoning):
            if thoughts is None:
                index, thoughts = index + 1, []
                yield "content_block_start", _start(index, _thinking("") | {"signature": ""})
            thoughts.append(ev.text)
            yield (
                "content_block_delta",
                _delta(index, {"type": "thinking_delta", "thinking": ev.text}),
            )
        elif isinstance(ev, str):
            if not text_open:
                index, text_open = index + 1, True
                block = {"type": "text", "text": ""}
                yield "content_block_start", _start(index, block)
            yield "content_block_delta", _delta(index, {"type": "text_delta", "text": ev})
        elif isinstance(ev, ToolCall):
            if text_open:
                yield stop()
                text_open = False
            index += 1
            yield "content_block_start", _start(index, {**_tool_use(ev), "input": {}})
            partial = {"type": "input_json_delta", "partial_json": ev.arguments}
            yield "content_block_delta", _delta(index, partial)
            yield stop()
        else:
            if text_open or not ev.calls:
                if not text_open:  # an answer without text still has its (empty) text block
                    index += 1
                    yield "content_block_start", _start(index, {"type": "text", "text": ""})
                yield stop()
            delta = {"stop_reason": _stop_reason(ev), "stop_sequence": ev.stop_sequence}
            tail = {"output_tokens": handle.usage.completion_tokens}
            yield "message_delta", {"type": "message_delta", "delta": delta, "usage": tail}
            yield "message_stop", {"type": "message_stop"}


def _start(index: int, block: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": index, "content_block": block}


def _delta(index: int, delta: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": delta}


async def create_message(
    registry: ModelRegistry, req: MessagesRequest, policy: Policy
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/messages."""
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    chat_req = to_chat(req)
    chat = build_chat(lm, chat_req, format_param="output_config")
    handles = submit_choices(lm, [chat.tokens], req.max_tokens, chat_req, 1, policy, chat.extras)
    msg_id = f"msg_{uuid.uuid4().hex}"
    budget = req.thinking.budget_tokens if req.thinking is not None else None
    if req.stream:
        events = _events(lm, msg_id, req.model, handles[0], chat.plan, chat.think, budget)
        return named_sse(events, handles, error_event)
    turn = await run_turn(lm, handles[0], chat.plan, chat.think, budget)
    return _message(msg_id, req.model, turn, handles[0])


async def count_tokens(registry: ModelRegistry, req: CountTokensRequest) -> dict[str, Any]:
    """POST /v1/messages/count_tokens: the prompt's tokens as the model would see them."""
    lm = await leased(registry, req.model)
    chat = build_chat(lm, to_chat(req), format_param="output_config")
    return {"input_tokens": len(chat.tokens)}
