"""Functionary v3.2: `>>>NAME\\n{..}` per call, `>>>all\\n` before text.

The generation prompt ends with `>>>`, so the output starts inside a header; the next `>>>`
starts another.
"""

from __future__ import annotations

import re

from daemon.core.families.base import CallContext, RawCall, Syntax, json_object
from daemon.core.families.streamed import CallScan, HeadedJson

RECIPIENT = ">>>"
_TEXT = "all\n"
_HEAD = re.compile(r"(?!\s*python\s*\n)([^\n]+)\n\s*(?=\{)")  # `python` may be code


class FunctionaryV32(Syntax):
    """Blocks are `NAME\\n{..}` up to the next `>>>`; an `all` block is the answer's text."""

    openers = (RECIPIENT,)
    initial = RECIPIENT
    ends = (RECIPIENT,)

    def close(self, opener: str, body: str) -> int | None:
        at = body.find(RECIPIENT)
        return None if at < 0 else at

    def passthrough(self, opener: str, body: str) -> int | None:
        if body.startswith(_TEXT):
            return len(_TEXT)
        return -1 if _TEXT.startswith(body) else None

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        name, nl, rest = body.partition("\n")
        name = name.strip()
        if not nl or name not in ctx.allowed:
            return None
        if name == "python":
            code = rest.strip()
            obj = json_object(code)
            return [RawCall(name, obj if obj is not None else {"code": code})] if code else None
        args = json_object(rest)
        return None if args is None else [RawCall(name, args)]

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _HEAD)
