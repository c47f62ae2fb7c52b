"""Anthropic Messages: translate into the shared chat path, answer in Anthropic's shapes."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.anthropic.errors import error_event
from daemon.api.anthropic.protocol import (
    Block,
    CountTokensRequest,
    ImageSource,
    MessagesRequest,
    _Conversation,
)
from daemon.api.keepalive import keep_alive_arg
from daemon.api.streams import Named, named_sse
from daemon.core.calls import CallArgs, CallStart, ToolCall
from daemon.core.chat import Generation, count_prompt, start_chat
from daemon.core.choices import Policy
from daemon.core.media import image_from_base64, image_from_url
from daemon.core.reasoning import Thinking
from daemon.core.request import (
    MEDIA_MARKER,
    CallIn,
    ChatRequest,
    FunctionSpec,
    JsonFormat,
    MediaPart,
    Message,
    NamedTool,
    Role,
    ToolChoice,
)
from daemon.core.sampling import ANTHROPIC, sampling_of
from daemon.core.turns import Reasoning, Turn, TurnEnd, run_turn, turn_events
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import FinishReason
from daemon.errors import InvalidRequest


def _result(block: Block, where: str) -> Message:
    """A tool_result as the chat's tool message: its text and images (an error result says
    so), each image a media marker in the text where it stands."""
    content = block.content
    images: list[MediaPart] = []
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    else:
        parts = []
        for j, b in enumerate(content):
            if b.type == "text" and b.text is not None:
                parts.append(b.text)
            elif b.type == "image" and b.source is not None:
                images.append(_image(b.source, f"{where}.content[{j}]"))
                parts.append(MEDIA_MARKER)
            else:
                raise InvalidRequest(
                    f"{where}: tool_result content may hold text and image blocks only",
                    param="messages",
                )
        text = _join(parts)
    text = f"Error: {text}" if block.is_error else text
    return Message("tool", text, call_id=block.tool_use_id, media=tuple(images))


def _join(pieces: list[str]) -> str:
    """Text blocks apart by a blank line, an image's marker against its neighbours (as the
    OpenAI and Ollama dialects place it: the same image and text make the same prompt)."""
    out = ""
    for i, piece in enumerate(pieces):
        if i and piece != MEDIA_MARKER and pieces[i - 1] != MEDIA_MARKER:
            out += "\n\n"
        out += piece
    return out


def _image(source: ImageSource, where: str) -> MediaPart:
    """An image block's source: base64 with its media type, or a URL (refused unless data:)."""
    if source.type == "base64" and source.data is not None:
        return image_from_base64(source.data, source.media_type or "", f"{where}.source")
    if source.type == "url" and source.url is not None:
        return image_from_url(source.url, f"{where}.source")
    raise InvalidRequest(
        f"{where}.source: give type base64 with data and media_type, or type url",
        param="messages",
    )


def _turn(role: Role, blocks: list[Block], i: int) -> list[Message]:
    """One Anthropic message as chat messages: tool results first, then the turn itself."""
    texts: list[str] = []
    images: list[MediaPart] = []
    thoughts: list[str] = []
    calls: list[CallIn] = []
    results: list[Message] = []
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
            calls.append(CallIn(b.name, b.input if b.input is not None else {}, b.id))
        elif b.type == "tool_result" and role == "user" and b.tool_use_id:
            results.append(_result(b, where))
        elif b.type == "image" and role == "user" and b.source is not None:
            images.append(_image(b.source, where))
            texts.append(MEDIA_MARKER)
        elif b.type == "document":
            raise InvalidRequest(
                f"{where}: {b.type} blocks are not supported (text, images and tool blocks are)",
                param="messages",
            )
        elif b.type in (
            "text",
            "tool_use",
            "tool_result",
            "thinking",
            "redacted_thinking",
            "image",
        ):
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
        reasoning = "\n\n".join(thoughts) if thoughts else None
        text = _join(texts)
        out = [
            *out,
            Message(role, text, calls=tuple(calls), reasoning=reasoning, media=tuple(images)),
        ]
    return out


def _tool_choice(req: _Conversation) -> tuple[ToolChoice, bool]:
    choice = req.tool_choice
    if choice is None:
        return None, True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type `tool` needs a name", param="tool_choice")
        return NamedTool(choice.name), parallel
    modes: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}
    return modes[choice.type], parallel


def to_chat(req: _Conversation) -> ChatRequest:
    """The Anthropic conversation as the core's chat request."""
    out = req.output_config
    messages: list[Message] = []
    system = req.system_text()
    if system:
        messages.append(Message("system", system))
    for i, m in enumerate(req.messages):
        if isinstance(m.content, str):
            messages.append(Message(m.role, m.content))
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
        tools.append(FunctionSpec(t.name, t.description, t.input_schema))
    choice, parallel = _tool_choice(req)
    # Thinking reaches a reasoning template as `enable_thinking` (absent: the template's
    # default) and effort as `reasoning_effort`; other templates ignore both.
    kwargs = {} if req.thinking is None else {"enable_thinking": req.thinking.type != "disabled"}
    effort = None
    if out is not None and out.effort is not None:
        effort = "high" if out.effort == "max" else out.effort
    fmt = None
    if out is not None and out.format is not None:
        fmt = JsonFormat(out.format.schema_)
    return ChatRequest(
        messages=tuple(messages),
        tools=tuple(tools),
        tool_choice=choice,
        parallel_calls=parallel,
        format=fmt,
        reasoning_effort=effort,
        template_kwargs=kwargs,
        format_param="output_config",
    )


def _stop_reason(end: TurnEnd) -> str:
    if end.calls and end.reason is FinishReason.STOP:
        return "tool_use"
    if end.reason is FinishReason.LENGTH:
        return "max_tokens"
    return "stop_sequence" if end.stop_sequence is not None else "end_turn"


def _tool_use(call_id: str, name: str, arguments: str = "{}") -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": "toolu_" + call_id.removeprefix("call_"),
        "name": name,
        "input": json.loads(arguments),
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
    content += [_tool_use(c.id, c.name, c.arguments) for c in turn.calls]
    return {
        **_head(msg_id, model),
        "content": content,
        "stop_reason": _stop_reason(turn.end),
        "stop_sequence": turn.end.stop_sequence,
        "usage": _usage(handle, handle.usage.completion_tokens),
    }


def _usage(handle: RequestHandle, output_tokens: int) -> dict[str, int]:
    """Usage as Anthropic counts it (and llama-server): `input_tokens` are the prompt tokens
    computed for this request, `cache_read_input_tokens` those its key's cached prefix gave
    (the total prompt is their sum, what count_tokens answers). edged's prompt cache is
    automatic: no tokens are written to a cache a client asks for."""
    cached = handle.usage.cached_tokens
    return {
        "input_tokens": handle.usage.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": output_tokens,
    }


async def _events(
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
        "usage": _usage(handle, 0),
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

    async for ev in turn_events(handle, plan, think, budget):
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
        elif isinstance(ev, CallStart):
            if text_open:
                yield stop()
                text_open = False
            index += 1
            yield "content_block_start", _start(index, _tool_use(ev.id, ev.name))
        elif isinstance(ev, CallArgs):  # the arguments as they are written
            partial = {"type": "input_json_delta", "partial_json": ev.text}
            yield "content_block_delta", _delta(index, partial)
        elif isinstance(ev, ToolCall):
            yield stop()
        else:
            if text_open or not ev.calls:
                if not text_open:  # an answer without text still has its (empty) text block
                    index += 1
                    yield "content_block_start", _start(index, {"type": "text", "text": ""})
                yield stop()
            delta = {"stop_reason": _stop_reason(ev), "stop_sequence": ev.stop_sequence}
            tail = _usage(handle, handle.usage.completion_tokens)
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
    gen = Generation(
        model=req.model,
        sampling=sampling_of(req, ANTHROPIC),
        max_tokens=req.max_tokens,
        keep_alive=keep_alive_arg(req.model_fields_set, req.keep_alive),
    )
    run = await start_chat(registry, to_chat(req), gen, policy)
    handle, plan, think = run.handles[0], run.prompt.plan, run.prompt.think
    msg_id = f"msg_{uuid.uuid4().hex}"
    budget = req.thinking.budget_tokens if req.thinking is not None else None
    if req.stream:
        events = _events(msg_id, req.model, handle, plan, think, budget)
        return named_sse(events, run.handles, error_event)
    turn = await run_turn(handle, plan, think, budget)
    return _message(msg_id, req.model, turn, handle)


async def count_tokens(
    registry: ModelRegistry, req: CountTokensRequest, policy: Policy
) -> dict[str, Any]:
    """POST /v1/messages/count_tokens: the prompt's tokens as the model would see them (its
    images read, checked and encoded as a message's would be)."""
    return {"input_tokens": await count_prompt(registry, to_chat(req), req.model, policy)}
