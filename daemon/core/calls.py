"""Tool calls parsed out of model text, whole or while it streams."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from daemon.core.tools import CLOSE, MISTRAL_TAG, OPEN, ToolFormat, ToolPlan


@dataclass(frozen=True)
class ToolCall:
    """One call parsed out of the model's text."""

    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

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


def _call_of(obj: Any, allowed: frozenset[str]) -> ToolCall | None:
    """A call from a decoded `{"name", "arguments"|"parameters"}` object, if it is one."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in allowed:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def _partial_suffix(buf: str, marker: str) -> int:
    """Length of the longest suffix of `buf` that is a proper prefix of `marker`."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


Event = str | ToolCall  # content text, or a finished call


class CallParser:
    """Splits streamed model text into content and calls, holding back possible markup.

    Whitespace next to calls is dropped; a block that does not decode to a call of an allowed
    function stays content, markup included.
    """

    def __init__(self, plan: ToolPlan | None) -> None:
        self._plan = plan
        self._buf = ""
        self._ws = ""  # whitespace-only content, released only if real content follows
        self._inside = False
        self._json = plan is not None and plan.fmt is not ToolFormat.HERMES
        self._decided = False  # leading-JSON formats: whether the output is content
        self.calls = 0

    def push(self, text: str) -> list[Event]:
        """Add a text delta; return what can be emitted now."""
        if self._plan is None:
            return [text] if text else []
        if self._json:
            return self._push_json(text)
        self._buf += text
        out: list[Event] = []
        while True:
            if self._inside:
                j = self._buf.find(CLOSE)
                if j < 0:
                    return out
                body, self._buf = self._buf[:j], self._buf[j + len(CLOSE) :]
                self._inside = False
                out += self._block(body)
            else:
                i = self._buf.find(OPEN)
                if i < 0:
                    keep = _partial_suffix(self._buf, OPEN)
                    ready, self._buf = (
                        self._buf[: len(self._buf) - keep],
                        self._buf[len(self._buf) - keep :],
                    )
                    return out + self._content(ready)
                out += self._content(self._buf[:i])
                self._buf = self._buf[i + len(OPEN) :]
                self._inside = True

    def finish(self) -> list[Event]:
        """End of generation: release what was held (an unfinished block stays content)."""
        if self._plan is None:
            return []
        if self._json:
            return self._finish_json()
        rest = (OPEN if self._inside else "") + self._buf
        if self._inside and self.calls:
            # A call cut short (max_tokens) after parsed ones: its markup is not content.
            rest = ""
        self._buf, self._inside = "", False
        out = self._content(rest)
        if self._ws and not self.calls:
            out.append(self._ws)
        self._ws = ""
        return out

    def _content(self, text: str) -> list[Event]:
        if not text:
            return []
        if not text.strip():
            self._ws += text
            return []
        text, self._ws = self._ws + text, ""
        return [text]

    def _block(self, body: str) -> list[Event]:
        assert self._plan is not None
        try:
            call = _call_of(json.loads(body), self._plan.allowed)
        except ValueError:
            call = None
        if call is None:
            # Markup that is no call stays content, unless calls were parsed: then an answer
            # is calls, never markup beside them.
            return [] if self.calls else self._content(OPEN + body + CLOSE)
        self._ws = ""
        self.calls += 1
        return [call]

    def _push_json(self, text: str) -> list[Event]:
        # Llama-3 and Mistral put a call at the very start; anything else is plain content.
        if self._decided:
            return [text] if text else []
        self._buf += text
        head = self._buf.lstrip()
        if not head:
            return []
        if head.startswith(("{", "[")):  # `[` also starts the [TOOL_CALLS] tag
            return []  # maybe a call: keep everything until the end
        self._decided = True
        out, self._buf = self._buf, ""
        return [out]

    def _finish_json(self) -> list[Event]:
        assert self._plan is not None
        text, self._buf = self._buf, ""
        body = text.strip()
        if body.startswith(MISTRAL_TAG):
            body = body[len(MISTRAL_TAG) :]
        try:
            value = json.loads(body)
        except ValueError:
            return [text] if text else []
        items = value if isinstance(value, list) else [value]
        calls = [_call_of(v, self._plan.allowed) for v in items]
        if not items or any(c is None for c in calls):
            return [text] if text else []
        self.calls += len(calls)
        return [c for c in calls if c is not None]


def parse_message(plan: ToolPlan | None, text: str) -> tuple[str | None, list[ToolCall]]:
    """A finished answer as (content, calls); content is None when only calls were made."""
    parser = CallParser(plan)
    events = parser.push(text) + parser.finish()
    calls = [e for e in events if isinstance(e, ToolCall)]
    content = "".join(e for e in events if isinstance(e, str))
    return (content or None) if calls else content, calls
