"""Families that name the function in a tag: Qwen3-Coder's XML parameters, Functionary v3.1."""

from __future__ import annotations

import json
import re
from typing import Any

from daemon.core.families.base import CallContext, RawCall, Syntax, after, json_object
from daemon.core.families.jsoncalls import END_TOOL_CALL, PYTHON_TAG, TOOL_CALL

FUNCTION, END_FUNCTION = "<function=", "</function>"
_XML_CALL = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.DOTALL)
_PARAM = re.compile(r"\s*<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)


def _value(raw: str, schema: dict[str, Any]) -> Any:
    """A parameter's text as its schema's type: strings verbatim, anything else as JSON."""
    text = raw.removeprefix("\n").removesuffix("\n")
    kind = schema.get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        if text.startswith('"'):  # a JSON-quoted string (what a grammar for a pattern writes)
            try:
                quoted = json.loads(text)
            except ValueError:
                return text
            return quoted if isinstance(quoted, str) else text
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text  # Qwen3-Coder writes unquoted strings where a schema allowed anything


def xml_call(body: str, ctx: CallContext) -> RawCall | None:
    """`<function=NAME><parameter=P>v</parameter>...</function>` as a call, else None."""
    m = _XML_CALL.fullmatch(body)
    if m is None or m.group(1).strip() not in ctx.allowed:
        return None
    name, inner = m.group(1).strip(), m.group(2)
    props = (ctx.schemas.get(name) or {}).get("properties") or {}
    args: dict[str, Any] = {}
    pos = 0
    for p in _PARAM.finditer(inner):
        if inner[pos : p.start()].strip():
            return None  # text between parameters: not this format
        key = p.group(1).strip()
        args[key] = _value(p.group(2), props.get(key) or {})
        pos = p.end()
    if inner[pos:].strip():
        return None
    return RawCall(name, args)


class Qwen3Xml(Syntax):
    """`<tool_call>\\n<function=NAME>\\n<parameter=P>\\nv\\n</parameter>\\n</function>\\n</tool_call>`
    (Qwen3-Coder, Qwen3.5, Nemotron 3); a JSON body (Hermes style) is read too."""

    openers = (TOOL_CALL,)
    closed = True

    def close(self, opener: str, body: str) -> int | None:
        return after(body, END_TOOL_CALL)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        inner = body.removesuffix(END_TOOL_CALL)
        call = xml_call(inner, ctx)
        if call is None:
            obj = json_object(inner)
            name = obj.get("name") if obj else None
            args = obj.get("arguments") if obj else None
            if isinstance(name, str) and name in ctx.allowed and isinstance(args, dict):
                call = RawCall(name, args)
        return None if call is None else [call]


class FunctionaryV31(Syntax):
    """`<function=NAME>{..}</function>`, and `<|python_tag|>` code for the `python` tool."""

    openers = (FUNCTION, PYTHON_TAG)

    def close(self, opener: str, body: str) -> int | None:
        return after(body, END_FUNCTION) if opener == FUNCTION else None

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        if opener == PYTHON_TAG:
            code = body.strip()
            return [RawCall("python", {"code": code})] if code and "python" in ctx.allowed else None
        if not body.endswith(END_FUNCTION):
            return None  # cut short
        name, sep, rest = body.removesuffix(END_FUNCTION).partition(">")
        args = json_object(rest)
        if not sep or args is None or name not in ctx.allowed:
            return None
        return [RawCall(name, args)]
