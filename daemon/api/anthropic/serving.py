"""Anthropic Messages: translate into the shared chat path, answer in Anthropic's shapes."""

from __future__ import annotations

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
from daemon.api.chat import Turn, TurnEnd, build_chat, run_turn, turn_events
from daemon.api.choices import Policy, submit_choices
from daemon.api.keepalive import keep_alive_arg
from daemon.api.openai.protocol import ChatCompletionRequest
from daemon.api.openai.tools import ToolCall
from daemon.api.streams import Named, named_sse
from daemon.api.watch import leased
from daemon.engine.handle import RequestHandle
from daemon.engine.loaded import LoadedModel
from daemon.engine.registry import ModelRegistry
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
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for k, b in enumerate(blocks):
        where = f"messages[{i}].content[{k}]"
        if b.type == "text" and b.text is not None:
            texts.append(b.text)
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
        elif b.type in ("text", "tool_use", "tool_result"):
            raise InvalidRequest(
                f"{where}: a {b.type} block is missing members or is in a {role} turn",
                param="messages",
            )
        else:
            raise InvalidRequest(
                f"{where}: content blocks of type `{b.type}` are not supported", param="messages"
            )
    out = results
    if texts or calls or not results:
        msg: dict[str, Any] = {"role": role, "content": "\n\n".join(texts)}
        if calls:
            msg["tool_calls"] = calls
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
    if req.thinking is not None and req.thinking.type != "disabled":
        raise InvalidRequest(
            "extended thinking is not supported by edged's models", param="thinking"
        )
    out = req.output_config
    if out is not None and out.effort is not None:
        raise InvalidRequest(
            "output_config.effort is not supported: edged's models do not reason",
            param="output_config",
        )
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


def _message(msg_id: str, model: str, turn: Turn, handle: RequestHandle) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
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
    lm: LoadedModel, msg_id: str, model: str, handle: RequestHandle, plan: Any
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

    def stop() -> Named:
        return "content_block_stop", {"type": "content_block_stop", "index": index}

    async for ev in turn_events(lm, handle, plan):
        if isinstance(ev, str):
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
            if text_open or index < 0:
                if index < 0:  # an empty answer still has its (empty) text block
                    index = 0
                    yield "content_block_start", _start(0, {"type": "text", "text": ""})
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
    if req.stream:
        return named_sse(
            _events(lm, msg_id, req.model, handles[0], chat.plan), handles, error_event
        )
    turn = await run_turn(lm, handles[0], chat.plan)
    return _message(msg_id, req.model, turn, handles[0])


async def count_tokens(registry: ModelRegistry, req: CountTokensRequest) -> dict[str, Any]:
    """POST /v1/messages/count_tokens: the prompt's tokens as the model would see them."""
    lm = await leased(registry, req.model)
    chat = build_chat(lm, to_chat(req), format_param="output_config")
    return {"input_tokens": len(chat.tokens)}
