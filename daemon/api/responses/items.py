"""Responses input and output items, and their translation into chat messages."""

from __future__ import annotations

import json
import uuid
from typing import Any

from daemon.api.responses.protocol import ContentPart, InputItem
from daemon.core.calls import ToolCall
from daemon.core.request import MEDIA_MARKER
from daemon.errors import InvalidRequest

_TEXT_PARTS = ("input_text", "output_text", "text", "reasoning_text", "summary_text")


def new_id(prefix: str) -> str:
    """An item or response id in OpenAI's style."""
    return f"{prefix}_{uuid.uuid4().hex}"


def _text(parts: str | list[ContentPart] | None, where: str) -> str:
    if parts is None:
        return ""
    if isinstance(parts, str):
        return parts
    out = []
    for k, p in enumerate(parts):
        if p.type == "input_audio":
            # Responses' input content has no audio part (the SDK's input_audio is evals').
            raise InvalidRequest(
                f"{where}[{k}]: the Responses API takes no audio; send input_audio parts to "
                "/v1/chat/completions",
                param="input",
            )
        if p.type in ("input_image", "input_file"):
            raise InvalidRequest(
                f"{where}[{k}]: {p.type} parts are not supported here (images go in a user "
                "message's content)",
                param="input",
            )
        if p.type == "refusal":
            continue  # a refusal the model gave earlier carries no text to render
        if p.type not in _TEXT_PARTS or p.text is None:
            raise InvalidRequest(
                f"{where}[{k}]: unsupported content part `{p.type}`", param="input"
            )
        out.append(p.text)
    return "".join(out)


def _user_content(parts: str | list[ContentPart] | None, where: str) -> list[dict[str, Any]]:
    """A user message's content as item parts: text and images (data URLs), in order."""
    if not isinstance(parts, list) or not any(p.type == "input_image" for p in parts):
        return [{"type": "input_text", "text": _text(parts, where)}]
    out: list[dict[str, Any]] = []
    for k, p in enumerate(parts):
        if p.type != "input_image":
            out.append({"type": "input_text", "text": _text([p], where)})
            continue
        if p.image_url is None:
            why = "file ids are not supported" if p.file_id else "it has no image_url"
            raise InvalidRequest(
                f"{where}[{k}]: an input_image needs a data: URL in image_url ({why})",
                param="input",
            )
        out.append({"type": "input_image", "image_url": p.image_url, "detail": p.detail or "auto"})
    return out


def input_items(value: str | list[InputItem]) -> list[dict[str, Any]]:
    """`input` as Responses items (ids added), validated: messages and function calls only."""
    if isinstance(value, str):
        value = [InputItem(role="user", content=value)]
    if not value:
        raise InvalidRequest("input must not be empty", param="input")
    items = []
    for i, it in enumerate(value):
        where = f"input[{i}]"
        kind = it.type or "message"
        if kind == "message":
            if it.role is None:
                raise InvalidRequest(f"{where}: a message needs a role", param="input")
            if it.role == "user":
                content = _user_content(it.content, f"{where}.content")
            else:
                text = _text(it.content, f"{where}.content")
                part = "output_text" if it.role == "assistant" else "input_text"
                content = [{"type": part, "text": text}]
                if part == "output_text":
                    content[0]["annotations"] = []
            items.append(
                {
                    "id": it.id or new_id("msg"),
                    "type": "message",
                    "role": it.role,
                    "content": content,
                    "status": "completed",
                }
            )
        elif kind == "function_call":
            if not it.call_id or not it.name or it.arguments is None:
                raise InvalidRequest(
                    f"{where}: a function_call needs call_id, name and arguments", param="input"
                )
            items.append(
                {
                    "id": it.id or new_id("fc"),
                    "type": "function_call",
                    "call_id": it.call_id,
                    "name": it.name,
                    "arguments": it.arguments,
                    "status": "completed",
                }
            )
        elif kind == "function_call_output":
            if not it.call_id or it.output is None:
                raise InvalidRequest(
                    f"{where}: a function_call_output needs call_id and output", param="input"
                )
            items.append(
                {
                    "id": it.id or new_id("fco"),
                    "type": "function_call_output",
                    "call_id": it.call_id,
                    "output": _text(it.output, f"{where}.output"),
                    "status": "completed",
                }
            )
        elif kind == "reasoning":
            # An earlier turn's thinking: rendered with the next assistant turn if the
            # template keeps it. Content is edged's own; a summary alone stands in for it.
            if it.content is None and it.summary is None:
                raise InvalidRequest(f"{where}: a reasoning item needs a summary", param="input")
            items.append(
                reasoning_item(
                    it.id or new_id("rs"),
                    _text(it.content, f"{where}.content"),
                    _text(it.summary, f"{where}.summary"),
                )
            )
        else:
            raise InvalidRequest(
                f"{where}: input items of type `{kind}` are not supported", param="input"
            )
    return items


def reasoning_item(
    item_id: str, text: str, summary: str = "", status: str = "completed"
) -> dict[str, Any]:
    """A reasoning item: the thinking as `reasoning_text` content; edged writes no summary."""
    # An item sent back with a summary only keeps no (empty) content part.
    whole = status == "completed" and (text or not summary)
    return {
        "id": item_id,
        "type": "reasoning",
        "status": status,
        "summary": [{"type": "summary_text", "text": summary}] if summary else [],
        "content": [{"type": "reasoning_text", "text": text}] if whole else [],
        "encrypted_content": None,
    }


def _thought(item: dict[str, Any]) -> str:
    """The text a reasoning item gives the template: its content, else its summary."""
    parts = item["content"] or item["summary"]
    return "".join(p["text"] for p in parts)


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _message(item: dict[str, Any]) -> dict[str, Any]:
    """A message item as a chat message: text parts joined with a newline, an image as the
    media marker where it stands (none beside it), its data URL under `images`."""
    text, images, after_image = "", [], False
    for p in item["content"]:
        if p["type"] == "input_image":
            text += MEDIA_MARKER
            images.append(p["image_url"])
            after_image = True
        else:
            text += ("\n" if text and not after_image else "") + p["text"]
            after_image = False
    msg: dict[str, Any] = {"role": item["role"], "content": text}
    if images:
        msg["images"] = images
    return msg


def to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Items as chat messages; calls join the assistant turn before them."""
    out: list[dict[str, Any]] = []
    thought: str | None = None  # reasoning waiting for the assistant turn after it
    for it in items:
        kind = it["type"]
        if kind == "reasoning":
            thought = _thought(it) if thought is None else thought + _thought(it)
            continue
        if kind == "message":
            out.append(_message(it))
            if it["role"] == "assistant" and thought is not None:
                out[-1]["reasoning_content"] = thought
        elif kind == "function_call":
            call = {
                "id": it["call_id"],
                "type": "function",
                "function": {"name": it["name"], "arguments": _arguments(it["arguments"])},
            }
            if out and out[-1]["role"] == "assistant" and thought is None:
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
                if thought is not None:
                    out[-1]["reasoning_content"] = thought
        else:
            out.append({"role": "tool", "tool_call_id": it["call_id"], "content": it["output"]})
        thought = None  # reasoning belongs to the turn right after it, or to none
    return out


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    """An assistant message output item."""
    content = (
        [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
    )
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def call_item(call: ToolCall, status: str = "completed") -> dict[str, Any]:
    """A function_call output item."""
    return {
        "id": "fc_" + call.id.removeprefix("call_"),
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments if status == "completed" else "",
    }
