"""DeepSeek's call markers: R1 (and its distills) and V3, V3.1's shorter form."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from daemon.core.families.base import CallContext, RawCall, Syntax, after, json_object
from daemon.core.families.streamed import CallScan, HeadedJson

CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END, SEP = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>", "<｜tool▁sep｜>"
# R1 distills are known to write these spellings of the outer marker too (llama.cpp reads them).
_OPENERS = (
    CALLS_BEGIN,
    "<｜tool_calls_begin｜>",
    "<｜tool calls begin｜>",
    "<｜tool\\_calls\\_begin｜>",
)
_BEGIN, _END, _SEP = re.escape(CALL_BEGIN), re.escape(CALL_END), re.escape(SEP)
_R1_HEAD = re.compile(rf"\s*{_BEGIN}\s*function\s*{_SEP}([^\n]*)\n\s*```json\s*(?=\{{)")
_R1_NEXT = re.compile(rf"\s*```\s*{_END}")
_V31_HEAD = re.compile(rf"\s*{_BEGIN}([^\n<]*?){_SEP}\s*(?=\{{)")
_V31_NEXT = re.compile(rf"\s*{_END}")


def _r1_call(head: str, rest: str, ctx: CallContext) -> RawCall | None:
    """`function<｜tool▁sep｜>NAME\\n```json\\n{..}\\n```` (R1, V3)."""
    name, nl, block = rest.partition("\n")
    block = block.strip()
    if head.strip() != "function" or not nl or not block.startswith("```json"):
        return None
    block = block.removeprefix("```json").removesuffix("```")
    args = json_object(block)
    if args is None or name.strip() not in ctx.allowed:
        return None
    return RawCall(name.strip(), args)


def _v31_call(head: str, rest: str, ctx: CallContext) -> RawCall | None:
    """`NAME<｜tool▁sep｜>{..}` (V3.1)."""
    args = json_object(rest)
    if args is None or head.strip() not in ctx.allowed:
        return None
    return RawCall(head.strip(), args)


class DeepSeek(Syntax):
    """`<｜tool▁calls▁begin｜>` (`<｜tool▁call▁begin｜>` CALL `<｜tool▁call▁end｜>`)+
    `<｜tool▁calls▁end｜>`; each CALL in R1's or V3.1's form."""

    openers = _OPENERS
    ends = (CALLS_END,)

    def __init__(self, v31: bool) -> None:
        self.v31 = v31

    def close(self, opener: str, body: str) -> int | None:
        return after(body, CALLS_END)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        inner = body.removesuffix(CALLS_END).strip()
        out = []
        read = _v31_call if self.v31 else _r1_call
        for part in inner.split(CALL_BEGIN)[1:] if inner.startswith(CALL_BEGIN) else [None]:
            if part is None:
                return None
            # The last call may lack its end marker when the output stopped right after it.
            text = part.strip().removesuffix(CALL_END)
            head, sep, rest = text.partition(SEP)
            call = read(head, rest, ctx) if sep else None
            if call is None:
                return None
            out.append(call)
        return out or None

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        if self.v31:
            return HeadedJson(ctx, _V31_HEAD, _V31_NEXT)
        return HeadedJson(ctx, _R1_HEAD, _R1_NEXT)


def tools_prompt(functions: Iterable[dict[str, Any]], v31: bool) -> str:
    """The system section that lists tools for DeepSeek templates, which list none themselves."""
    listing = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    if v31:
        example = f"{CALL_BEGIN}example_function_name{SEP}" + '{"arg1": "some_value"}' + CALL_END
    else:
        example = (
            f"{CALL_BEGIN}function{SEP}example_function_name\n```json\n"
            + '{"arg1": "some_value"}\n```'
            + CALL_END
        )
    return (
        "You can call any of the following tools to satisfy the user's requests:\n"
        f"{listing}\n\nExample function tool call syntax:\n\n"
        f"{CALLS_BEGIN}{example}{CALLS_END}\n"
    )
