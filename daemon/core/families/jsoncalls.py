"""Families whose calls are JSON: Hermes/Qwen 2.5, Llama 3.x, Mistral, Granite, Command R7B."""

from __future__ import annotations

import json
import re

from daemon.core.families.base import (
    CallContext,
    RawCall,
    Syntax,
    after,
    call_list,
    json_object,
    named_call,
)
from daemon.core.families.streamed import CallScan, HeadedJson

TOOL_CALL, END_TOOL_CALL = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
TOOL_CALLS, ARGS, CALL_ID = "[TOOL_CALLS]", "[ARGS]", "[CALL_ID]"
GRANITE_TAG = "<|tool_call|>"
START_ACTION, END_ACTION = "<|START_ACTION|>", "<|END_ACTION|>"
# The headers streamed calls start with (the name before the arguments); each ends where the
# arguments object starts.
_NAME = r'"name"\s*:\s*"([^"\\]*)"\s*,\s*'
HERMES_HEAD = re.compile(r"\s*\{\s*" + _NAME + r'"arguments"\s*:\s*(?=\{)')
_LLAMA_KEYS = r'"(?:parameters|arguments)"\s*:\s*(?=\{)'
_LLAMA_HEAD = re.compile(r"\s*" + _NAME + _LLAMA_KEYS)  # after the answer's leading `{`
_LLAMA_TAG_HEAD = re.compile(r"\s*\{\s*" + _NAME + _LLAMA_KEYS)
_LIST_HEAD = re.compile(r"\s*\[?\s*\{\s*" + _NAME + r'"arguments"\s*:\s*(?=\{)')
_LIST_NEXT = re.compile(r"\s*\}\s*,")
_R7B_HEAD = re.compile(
    r'\s*\[?\s*\{\s*(?:"tool_call_id"\s*:\s*"[^"\\]*"\s*,\s*)?"tool_name"\s*:\s*"([^"\\]*)"\s*,'
    r'\s*"parameters"\s*:\s*(?=\{)'
)
_MISTRAL_HEAD = re.compile(r"([^\[\]]*?)(?:\[CALL_ID\]([^\[\]]*?))?\[ARGS\]\s*(?=\{)")
_MISTRAL_NEXT = re.compile(r"\s*\[TOOL_CALLS\]")


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None


class Hermes(Syntax):
    """`<tool_call>{"name": .., "arguments": ..}</tool_call>`, any number of blocks."""

    openers = (TOOL_CALL,)
    closed = True
    ends = (END_TOOL_CALL,)

    def close(self, opener: str, body: str) -> int | None:
        return after(body, END_TOOL_CALL)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        call = named_call(_json(body.removesuffix(END_TOOL_CALL)), ctx)
        return None if call is None else [call]

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, HERMES_HEAD)  # `{"name": "F", "arguments": {..}`, in that order


# Llama 3.1's builtin tools: `<|python_tag|>brave_search.call(query="...")`.
_BUILTIN = re.compile(r"\s*([a-z_]+)\.call\((.*)\)\s*", re.DOTALL)
_KWARG = re.compile(r'\s*(\w+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,]+)\s*(?:,|$)')


def _builtin(body: str, ctx: CallContext) -> RawCall | None:
    m = _BUILTIN.fullmatch(body)
    if m is None or m.group(1) not in ctx.allowed:
        return None
    args: dict[str, object] = {}
    rest = m.group(2)
    while rest.strip():
        k = _KWARG.match(rest)
        if k is None:
            return None
        value = _json(k.group(2).strip())
        args[k.group(1)] = value if value is not None else k.group(2).strip()
        rest = rest[k.end() :]
    return RawCall(m.group(1), args)


class Llama3(Syntax):
    """A bare `{"name": .., "parameters": ..}` answer, or `<|python_tag|>` then a builtin call,
    a JSON call or code for the `python`/`code_interpreter` tool."""

    openers = (PYTHON_TAG,)
    leading = ("{",)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        keys = ("parameters", "arguments")
        if opener == "{":
            call = named_call(_json(opener + body), ctx, keys=keys)
            return None if call is None else [call]
        text = body.strip()
        call = named_call(_json(text), ctx, keys=keys) if text.startswith("{") else None
        call = call or _builtin(text, ctx)
        if call is None and text:
            name = next((n for n in ("python", "code_interpreter") if n in ctx.allowed), None)
            call = RawCall(name, {"code": text}) if name else None
        return None if call is None else [call]

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _LLAMA_HEAD if opener == "{" else _LLAMA_TAG_HEAD)


class Mistral(Syntax):
    """`[TOOL_CALLS][{"name": .., "arguments": .., "id"?: ..}, ...]` (Nemo); a leading `[`
    without the tag counts too (the tag is a control token some outputs lose)."""

    openers = (TOOL_CALLS,)
    leading = ("[",)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        text = body if opener == TOOL_CALLS else opener + body
        return call_list(_json(text), ctx)


class MistralArgs(Syntax):
    """`[TOOL_CALLS]NAME[ARGS]{..}` per call, `[CALL_ID]ID` optional before `[ARGS]`
    (Mistral Small 3.2, Devstral, Magistral)."""

    openers = (TOOL_CALLS,)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        out = []
        for part in body.split(TOOL_CALLS):
            head, sep, args = part.partition(ARGS)
            name, _, call_id = head.partition(CALL_ID)
            obj = json_object(args)
            if not sep or obj is None or name.strip() not in ctx.allowed:
                return None
            out.append(RawCall(name.strip(), obj, call_id.strip() or None))
        return out

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _MISTRAL_HEAD, _MISTRAL_NEXT)


class Granite(Syntax):
    """`<|tool_call|>[{"name": .., "arguments": ..}, ...]` to the end of the output."""

    openers = (GRANITE_TAG,)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        return call_list(_json(body), ctx)

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _LIST_HEAD, _LIST_NEXT)


class CommandR7B(Syntax):
    """`<|START_ACTION|>[{"tool_call_id": .., "tool_name": .., "parameters": ..}]<|END_ACTION|>`."""

    openers = (START_ACTION,)
    ends = (END_ACTION,)

    def close(self, opener: str, body: str) -> int | None:
        return after(body, END_ACTION)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        items = _json(body.removesuffix(END_ACTION))
        calls = call_list(items, ctx, name_key="tool_name", keys=("parameters",))
        # The model numbers its calls itself ("0", "1"): not unique across turns, so not ids.
        return None if calls is None else [RawCall(c.name, c.arguments) for c in calls]

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _R7B_HEAD, _LIST_NEXT)
