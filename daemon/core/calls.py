"""Tool calls parsed out of model text, whole or while it streams, in the family's own syntax."""

from __future__ import annotations

import json
import secrets
import string
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.core.families import SYNTAXES, CallContext, Syntax, ToolFormat
from daemon.core.families.base import held
from daemon.core.families.streamed import CallScan
from daemon.core.tools import ToolPlan


def _openai_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


_ALNUM = string.ascii_letters + string.digits
_MISTRAL = frozenset({ToolFormat.MISTRAL, ToolFormat.MISTRAL_ARGS})


def mistral_id() -> str:
    """A call id as Mistral's templates require: nine letters or digits."""
    return "".join(secrets.choice(_ALNUM) for _ in range(9))


def _call_id(fmt: ToolFormat, own: str | None) -> str:
    """A call's id: Mistral's own when it wrote a valid one, else a fresh one."""
    if fmt in _MISTRAL:
        ok = own is not None and len(own) == 9 and all(c in _ALNUM for c in own)
        return own if ok and own is not None else mistral_id()
    return _openai_id()


@dataclass(frozen=True)
class ToolCall:
    """One call parsed out of the model's text (as an event: the call has ended)."""

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


@dataclass(frozen=True)
class CallStart:
    """A call begins: its place among the answer's calls, its id and its function."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class CallArgs:
    """A piece of a call's arguments (JSON text) as the model writes them."""

    index: int
    text: str


# Content text, or a call's events: it begins, its arguments' pieces, it ends (the whole call).
Event = str | CallStart | CallArgs | ToolCall


@dataclass
class _Begun:
    """A call of the open block that has begun: its index and id, the arguments sent so far."""

    index: int
    id: str
    sent: str = ""
    ended: bool = False


class CallParser:
    """Splits streamed model text into content and calls, holding back possible markup.

    The family's syntax says where call blocks open and end. Whitespace before the first text
    is held until it is known not to precede only calls; whitespace right after a call is
    dropped. A call comes as `CallStart`, `CallArgs` pieces whose texts join into its
    arguments, then the `ToolCall` itself.

    Where the syntax reads calls while they stream (`Syntax.scan`), a call begins once its
    header is complete and names an offered function, its arguments follow as they are
    written, and from then on it is a call: a block that then turns out malformed or cut short
    ends it with its arguments closed into valid JSON (`families/streamed.py`). Other blocks
    are read when they end: one that does not decode to calls of allowed functions stays
    content, markup included, unless calls were made already (an answer is then calls, never
    markup beside them). The events do not depend on how the output was cut into pieces, except
    for where the arguments' pieces fall.
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
        self._scan: CallScan | None = None  # the open block's streaming reader
        self._fed = 0  # how much of the open block's body its reader has read
        self._begun: list[_Begun] = []  # the open block's calls that have begun
        self.calls = 0
        if self._syntax is not None and self._syntax.initial is not None:
            self._begin(self._syntax.initial)

    def push(self, text: str) -> list[Event]:
        """Add a text delta; return what can be emitted now."""
        if self._syntax is None:
            return [text] if text else []
        self._buf += text
        out: list[Event] = []
        while self._step(out):
            pass
        return out

    def _begin(self, opener: str) -> None:
        assert self._syntax is not None
        self._opener, self._fed, self._begun = opener, 0, []
        self._scan = self._syntax.scan(opener, self._ctx)

    def _step(self, out: list[Event]) -> bool:
        """Advance once over the buffer; False when more text is needed."""
        syntax = self._syntax
        assert syntax is not None
        if self._opener is not None:
            header = syntax.passthrough(self._opener, self._buf)
            if header == -1:
                return False
            if header is not None:  # a text block: its header goes, the text is content
                self._buf, self._opener, self._scan = self._buf[header:], None, None
                return True
            end = syntax.close(self._opener, self._buf)
            if end is None:
                # Only text that is surely the block's (not an end marker's start) is read.
                self._read(self._buf[: len(self._buf) - held(self._buf, syntax.ends)], out)
                return False
            body, self._buf = self._buf[:end], self._buf[end:]
            out += self._block(body)
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
                self._buf, self._start = head[len(lead) :], False
                self._begin(lead)
                return True
            if any(m.startswith(head) for m in syntax.leading):
                return False
        self._start = False
        hits = [(i, -len(m), m) for m in syntax.openers if (i := self._buf.find(m)) >= 0]
        if hits:
            at, _, opener = min(hits)
            out += self._content(self._buf[:at])
            self._buf = self._buf[at + len(opener) :]
            self._begin(opener)
            return True
        keep = held(self._buf, syntax.openers)
        ready, self._buf = self._buf[: len(self._buf) - keep], self._buf[len(self._buf) - keep :]
        out += self._content(ready)
        return False

    def _read(self, body: str, out: list[Event]) -> None:
        """Give the open block's reader what is new in its body; emit the calls' progress."""
        if self._scan is None or len(body) <= self._fed:
            return
        self._scan.feed(body[self._fed :])
        self._fed = len(body)
        self._progress(self._scan, out)

    def _progress(self, scan: CallScan, out: list[Event]) -> None:
        assert self._plan is not None
        for k, call in enumerate(scan.calls):
            if k == len(self._begun):
                begun = _Begun(self.calls, _call_id(self._plan.fmt, call.id))
                self._begun.append(begun)
                self.calls += 1
                self._ws, self._lead, self._after_call = "", False, True
                out.append(CallStart(begun.index, begun.id, call.name))
            begun = self._begun[k]
            if len(call.args) > len(begun.sent):
                out.append(CallArgs(begun.index, call.args[len(begun.sent) :]))
                begun.sent = call.args
            if call.done and not begun.ended:
                begun.ended = True
                out.append(ToolCall(call.name, call.args, begun.id))

    def finish(self) -> list[Event]:
        """End of generation: release what was held. An unfinished block is parsed if its
        syntax runs to the end of the output, else it stays content (unless a call in it has
        begun: that call ends here)."""
        if self._syntax is None:
            return []
        out: list[Event] = []
        while self._step(out):
            pass
        if self._opener is not None:
            body, self._buf = self._buf, ""
            if self._syntax.passthrough(self._opener, body) is not None:
                self._opener = self._scan = None
                out += self._content(body)  # a text block's unfinished header
            else:
                out += self._block(body, cut=True)
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

    def _block(self, body: str, cut: bool = False) -> list[Event]:
        """The open block ends with this body (`cut`: by the end of the output)."""
        syntax, opener, scan = self._syntax, self._opener, self._scan
        assert syntax is not None and self._plan is not None and opener is not None
        out: list[Event] = []
        self._read(next((body[: -len(e)] for e in syntax.ends if body.endswith(e)), body), out)
        self._opener = self._scan = None
        if scan is not None and scan.calls:
            scan.finish()
            self._progress(scan, out)
            return out
        raws = None if cut and syntax.closed else syntax.parse(opener, body, self._ctx)
        if not raws:
            return [] if self.calls else self._content(opener + body)
        self._ws, self._lead, self._after_call = "", False, True
        for raw in raws:
            call_id = _call_id(self._plan.fmt, raw.id)
            call = ToolCall(raw.name, json.dumps(raw.arguments, ensure_ascii=False), call_id)
            out += [CallStart(self.calls, call.id, call.name), CallArgs(self.calls, call.arguments)]
            out.append(call)
            self.calls += 1
        return out


def parse_message(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall]]:
    """A finished answer as (content, calls); content is None when only calls were made."""
    parser = CallParser(plan)
    events = parser.push(text) + parser.finish()
    calls = [e for e in events if isinstance(e, ToolCall)]
    content = "".join(e for e in events if isinstance(e, str))
    return (content or None) if calls else content, calls
