"""Families that name the function in a tag: Qwen3-Coder's XML parameters, Functionary v3.1."""

from __future__ import annotations

import json
import re
from typing import Any

from daemon.core.families.base import CallContext, RawCall, Syntax, after, held, json_object
from daemon.core.families.jsoncalls import END_TOOL_CALL, HERMES_HEAD, PYTHON_TAG, TOOL_CALL
from daemon.core.families.streamed import (
    BufferedScan,
    CallScan,
    EitherScan,
    HeadedJson,
    PartialCall,
)

FUNCTION, END_FUNCTION = "<function=", "</function>"
_XML_CALL = re.compile(r"\s*<function=([^>\n]+)>(.*?)</function>\s*", re.DOTALL)
_PARAM = re.compile(r"\s*<parameter=([^>\n]+)>(.*?)</parameter>", re.DOTALL)
PARAMETER, END_PARAMETER = "<parameter=", "</parameter>"
_FUNCTION_HEAD = re.compile(r"\s*<function=([^>\n]+)>")
_PARAM_HEAD = re.compile(r"\s*<parameter=([^>\n]+)>")
_FUNCTION_END = re.compile(r"\s*</function>")
_V31_HEAD = re.compile(r"([^>\n]+)>\s*(?=\{)")


def _is_string(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _value(raw: str, schema: dict[str, Any]) -> Any:
    """A parameter's text as its schema's type: strings verbatim, anything else as JSON."""
    text = raw.removeprefix("\n").removesuffix("\n")
    if _is_string(schema):
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
    ends = (END_TOOL_CALL,)

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

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return EitherScan(XmlScan(ctx), HeadedJson(ctx, HERMES_HEAD))


class FunctionaryV31(Syntax):
    """`<function=NAME>{..}</function>`, and `<|python_tag|>` code for the `python` tool."""

    openers = (FUNCTION, PYTHON_TAG)
    ends = (END_FUNCTION,)

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

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _V31_HEAD) if opener == FUNCTION else None


class XmlScan(BufferedScan):
    """Qwen3-Coder's calls as JSON built while they arrive: `{` once `<function=NAME>` is
    complete, each key once its `<parameter=P>` is, a string value's characters as they come
    (a last newline and what may be `</parameter>` held back), any other value whole at its
    `</parameter>`, `}` at `</function>`."""

    def __init__(self, ctx: CallContext) -> None:
        super().__init__(ctx)  # states: head, params, value, stop
        self._props: dict[str, Any] = {}
        self._schema: dict[str, Any] = {}
        self._before = ""  # the arguments' text before the open value

    def _advance(self) -> bool:
        if self._state == "head":
            name = self._begin(_FUNCTION_HEAD.match(self._buf))
            if name is None:
                return False
            self._props = (self._ctx.schemas.get(name) or {}).get("properties") or {}
            self.calls.append(PartialCall(name, None, "{"))
            self._state = "params"
            return True
        call = self.calls[-1]
        if self._state == "params":
            m = _PARAM_HEAD.match(self._buf)
            if m is not None:
                key = m.group(1).strip()
                self._schema = self._props.get(key) or {}
                sep = "" if call.args == "{" else ", "
                call.args += sep + json.dumps(key, ensure_ascii=False) + ": "
                self._before = call.args
                self._buf, self._state = self._buf[m.end() :], "value"
                return True
            m = _FUNCTION_END.match(self._buf)
            if m is not None:
                call.args, call.done, self._state = call.args + "}", True, "stop"
                return False
            head = self._buf.lstrip()
            maybe = PARAMETER.startswith(head) or END_FUNCTION.startswith(head)
            if not maybe and not (head.startswith(PARAMETER) and not set(head) & {">", "\n"}):
                self._state = "stop"  # text that is not this format: the call ends here
            return False
        at = self._buf.find(END_PARAMETER)
        if at < 0:
            call.args = self._before + self._streamed(self._buf)
            return False
        call.args = self._before + self._whole(self._buf[:at])
        self._buf, self._state = self._buf[at + len(END_PARAMETER) :], "params"
        return True

    def _whole(self, raw: str) -> str:
        return json.dumps(_value(raw, self._schema), ensure_ascii=False)

    def _streamed(self, raw: str) -> str:
        """The certain start of a value still being written: a string's (not JSON-quoted) text
        so far, short of what may yet be its end; nothing for other values."""
        body = raw.removeprefix("\n")
        if not _is_string(self._schema) or not body or body.startswith('"'):
            return ""
        visible = raw[: len(raw) - held(raw, (END_PARAMETER,))].removeprefix("\n")
        visible = visible.removesuffix("\n")  # perhaps the newline before </parameter>
        return '"' + json.dumps(visible, ensure_ascii=False)[1:-1]

    def finish(self) -> None:
        if not self.calls or self.calls[-1].done:
            return
        call = self.calls[-1]
        if self._state == "value":  # cut short inside a value: what was written is the value
            raw = self._buf[: len(self._buf) - held(self._buf, (END_PARAMETER,))]
            call.args = self._before + self._whole(raw)
        call.args, call.done = call.args + "}", True
