"""Tool calls parsed out of model text, whole or while it streams, in the family's own syntax."""

from __future__ import annotations

import json
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.core.families import SYNTAXES, CallContext, RawCall, Syntax, ToolFormat
from daemon.core.tools import ToolPlan


def _openai_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_ALNUM = string.ascii_letters + string.digits
_MISTRAL = frozenset({ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS})


def mistral_id() -> str:
    """A call id as Mistral's templates require: nine letters or digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


@dataclass(frozen=True)
class ToolCall:
    """One call parsed out of the model's text."""

    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=_openai_id)

    def wire(self, index: int | None = None) -> dict[str, Any]:
        """The OpenAI `tool_calls` entry (with `index` when streamed)."""
        out: dict[str, Any] = {"index": index} if index is not None else {}
        out.update(
            {
                "id": self.id,
                "type": "function",
                "function": {"name": self.name, "arguments": self.arguments},
            }
        )
        return out


def _tool_call(raw: RawCall, fmt: ToolFormat) -> ToolCall:
    """A parsed call with its id: Mistral's own when it wrote a valid one, else a fresh one."""
    args = json.dumps(raw.arguments, ensure_ascii=False)
    if fmt in _MISTRAL:
        own = raw.id
        ok = own is not None and len(own) == 9 and all(c in _ALNUM for c in own)
        return ToolCall(raw.name, args, own if ok and own is not None else mistral_id())
    return ToolCall(raw.name, args)


def _partial_suffix(buf: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of one of the markers."""
    best = 0
    for marker in markers:
        for n in range(min(len(buf), len(marker) - 1), best, -1):
            if marker.startswith(buf[-n:]):
                best = n
                break
    return best


Event = str | ToolCall  # content text, or a finished call


class CallParser:
    """Splits streamed model text into content and calls, holding back possible markup.

    The family's syntax says where call blocks open and end. Whitespace before the first text
    is held until it is known not to precede only calls; whitespace right after a call is
    dropped. A block that does not decode to calls of allowed functions stays content, markup
    included, unless calls were parsed already: an answer is then calls, never markup beside
    them. The events' text and calls do not depend on how the output was cut into pieces.
    """

    def __init__(self, plan: ToolPlan | None) -> None:
        self._plan = plan
        self._syntax: Syntax | None = SYNTAXES[plan.fmt] if plan is not None else None
        allowed = plan.allowed if plan is not None else frozenset()
        self._ctx = CallContext(allowed, plan.schemas() if plan is not None else {})
        self._buf = ""
        self._ws = ""  # leading whitespace, released only if text follows
        self._lead = True  # nothing but whitespace seen yet
        self._after_call = False
        self._opener: str | None = None  # the open block's opener
        self._start = True  # at the very start of the answer: `leading` openers count
        if self._syntax is not None and self._syntax.initial is not None:
            self._opener = self._syntax.initial
        self.calls = 0

    def push(self, text: str) -> list[Event]:
        """Add a text delta; return what can be emitted now."""
        if self._syntax is None:
            return [text] if text else []
        self._buf += text
        out: list[Event] = []
        while self._step(out):
            pass
        return out

    def _step(self, out: list[Event]) -> bool:
        """Advance once over the buffer; False when more text is needed."""
        syntax = self._syntax
        assert syntax is not None
        if self._opener is not None:
            header = syntax.passthrough(self._opener, self._buf)
            if header == -1:
                return False
            if header is not None:  # a text block: its header goes, the text is content
                self._buf, self._opener = self._buf[header:], None
                return True
            end = syntax.close(self._opener, self._buf)
            if end is None:
                return False
            body, self._buf = self._buf[:end], self._buf[end:]
            opener, self._opener = self._opener, None
            out += self._block(opener, body)
            return True
        if self._start and syntax.leading:
            head = self._buf.lstrip()
            if not head:
                return False
            if any(o.startswith(head) and o != head for o in syntax.openers):
                return False  # maybe an opener, which comes first
            lead = next((m for m in syntax.leading if head.startswith(m)), None)
            if any(head.startswith(o) for o in syntax.openers):
                lead = None
            if lead is not None:
                self._ws += self._buf[: len(self._buf) - len(head)]
                self._buf, self._opener, self._start = head[len(lead) :], lead, False
                return True
            if any(m.startswith(head) for m in syntax.leading):
                return False
        self._start = False
        hits = [(i, -len(m), m) for m in syntax.openers if (i := self._buf.find(m)) >= 0]
        if hits:
            at, _, opener = min(hits)
            out += self._content(self._buf[:at])
            self._buf, self._opener = self._buf[at + len(opener) :], opener
            return True
        keep = _partial_suffix(self._buf, syntax.openers)
        ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        out += self._content(ready)
        return False

    def finish(self) -> list[Event]:
        """End of generation: release what was held (an unfinished block is parsed if its syntax
        runs to the end of the output, else it stays content)."""
        if self._syntax is None:
            return []
        out: list[Event] = []
        while self._step(out):
            pass
        if self._opener is not None:
            opener, body, self._opener = self._opener, self._buf, None
            self._buf = ""
            if self._syntax.closed:
                out += [] if self.calls else self._content(opener + body)
            elif self._syntax.passthrough(opener, body) is not None:
                out += self._content(body)  # a text block's unfinished header
            else:
                out += self._block(opener, body)
        out += self._content(self._buf)
        self._buf = ""
        if self._ws and not self.calls:
            out.append(self._ws)
        self._ws = ""
        return out

    def _content(self, text: str) -> list[Event]:
        if not text:
            return []
        if self._after_call:
            text = text.lstrip()
            if not text:
                return []
            self._after_call = False
        if self._lead:
            if not text.strip():
                self._ws += text
                return []
            self._lead = False
            text, self._ws = self._ws + text, ""
        return [text]

    def _block(self, opener: str, body: str) -> list[Event]:
        assert self._syntax is not None and self._plan is not None
        raws = self._syntax.parse(opener, body, self._ctx)
        if not raws:
            return [] if self.calls else self._content(opener + body)
        self._ws, self._lead, self._after_call = "", False, True
        self.calls += len(raws)
        return [_tool_call(r, self._plan.fmt) for r in raws]


def parse_message(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall]]:
    """A finished answer as (content, calls); content is None when only calls were made."""
    parser = CallParser(plan)
    events = parser.push(text) + parser.finish()
    calls = [e for e in events if isinstance(e, ToolCall)]
    content = "".join(e for e in events if isinstance(e, str))
    return (content or None) if calls else content, calls
