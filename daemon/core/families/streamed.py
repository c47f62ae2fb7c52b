"""Calls read while their block is still being written: each call's name once its header is
complete, then the text of its arguments as it becomes certain.

A scanner is fed a block's body in pieces (never past the block's end) and keeps a list of the
calls it has begun. Its reading depends only on the text, not on how it was cut: feeding the
same body in any pieces gives the same calls, and a call's `args` only ever grow. `finish`
ends the block: every begun call's arguments are closed into valid JSON, whatever the text did
after it began (cut short, malformed, stray text): a call that began is a call.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from daemon.core.families.base import CallContext


@dataclass
class PartialCall:
    """A call being read: its name, the model's own id if it wrote one, the arguments' certain
    JSON text so far, and whether that text is complete."""

    name: str
    id: str | None = None
    args: str = ""
    done: bool = False


class CallScan:
    """Reads a block's calls as its body arrives."""

    def __init__(self) -> None:
        self.calls: list[PartialCall] = []

    def feed(self, text: str) -> None:
        """Read the next piece of the block's body."""
        raise NotImplementedError

    def finish(self) -> None:
        """The block ended: close every begun call's arguments."""
        raise NotImplementedError


_PLAIN = re.compile(r'[^"\\\x00-\x1f]+')
_SCALAR_CHARS = re.compile(r"[-+.0-9a-zA-Z]+")
_SCALAR = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?|true|false|null")
_WS = " \t\r\n"


class JsonScan:
    """One JSON object read as it arrives: the text that is certain so far (`certain`), and
    what closes it into a valid value (`final`).

    A point is certain where the text read so far has a fixed completion: inside a string
    (closed by a quote), after `{`, `[`, a key, a colon or a whole value. Commas, a number or
    literal still being written and an escape not yet complete wait for what follows. Raw
    control characters inside strings, which strict JSON refuses, are written escaped. Text that
    is not JSON ends the reading (`broken`) at the last certain point.
    """

    def __init__(self) -> None:
        self.text = ""
        self.safe = 0
        self.closing = ""  # what closes text[:safe] into a value
        self.done = False
        self.broken = False
        self._stack: list[str] = []  # the open containers' closers
        self._state = "top"
        self._in_key = False
        self._pending = ""  # an escape or a scalar not yet complete

    @property
    def certain(self) -> str:
        """The text read so far that no later text can change."""
        return self.text[: self.safe]

    def final(self) -> str:
        """The value: the whole text when it is complete, else the certain text closed."""
        if not self.done and self._state == "scalar" and _SCALAR.fullmatch(self._pending):
            scalar, self._pending = self._pending, ""
            self._value_end(scalar)  # the end of the output ends a number too
        return self.text if self.done else self.certain + self.closing

    def feed(self, text: str) -> int:
        """Read text; returns how much of it belongs to the value (all of it until it ends)."""
        i = 0
        while i < len(text) and not (self.done or self.broken):
            i = self._step(text, i)
        return i

    def _mark(self, closing: str) -> None:
        self.safe = len(self.text)
        self.closing = closing + "".join(reversed(self._stack))

    def _value_end(self, text: str) -> None:
        self.text += text
        self._state = "after"
        self._mark("")

    def _step(self, text: str, i: int) -> int:
        c, state = text[i], self._state
        if state == "string":
            return self._string(text, i)
        if state == "scalar":
            m = _SCALAR_CHARS.match(text, i)
            if m is not None:
                self._pending += m.group()
                return m.end()
            scalar, self._pending = self._pending, ""
            if _SCALAR.fullmatch(scalar) is None:
                self.broken = True
                return i
            self._value_end(scalar)
            return i
        if c in _WS and state != "top":
            self.text += c
            return i + 1
        if state == "top":
            if c != "{":
                self.broken = True
                return i
            return self._open(i, c, "}", "first_key")
        if state in ("first_key", "key"):
            if c == '"':
                return self._quote(i, c, key=True)
            if c == "}" and state == "first_key":
                return self._close(i, c)
        elif state == "colon":
            if c == ":":
                self.text += c
                self._state = "value"
                self._mark("null")
                return i + 1
        elif state in ("value", "first_value"):
            if c == "]" and state == "first_value":
                return self._close(i, c)
            if c == "{":
                return self._open(i, c, "}", "first_key")
            if c == "[":
                return self._open(i, c, "]", "first_value")
            if c == '"':
                return self._quote(i, c, key=False)
            if c in "-0123456789tfn":
                self._state, self._pending = "scalar", ""
                return i
        elif state == "after":
            if c == ",":
                self.text += c
                self._state = "key" if self._stack[-1] == "}" else "value"
                return i + 1
            if c == self._stack[-1]:
                return self._close(i, c)
        self.broken = True
        return i

    def _open(self, i: int, c: str, closer: str, state: str) -> int:
        self.text += c
        self._stack.append(closer)
        self._state = state
        self._mark("")
        return i + 1

    def _close(self, i: int, c: str) -> int:
        self._stack.pop()
        self._value_end(c)
        self.done = not self._stack
        return i + 1

    def _quote(self, i: int, c: str, key: bool) -> int:
        self.text += c
        self._state, self._in_key = "string", key
        self._mark('": null' if key else '"')
        return i + 1

    def _string(self, text: str, i: int) -> int:
        if self._pending:  # inside an escape: `\\x` or `\\uXXXX`
            self._pending += text[i]
            esc = self._pending
            if esc[1] != "u":
                if esc[1] not in '"\\/bfnrt':
                    self.broken = True
                    return i
            elif len(esc) > 2 and esc[-1] not in "0123456789abcdefABCDEF":
                self.broken = True
                return i
            elif len(esc) < 6:
                return i + 1
            self.text += esc
            self._pending = ""
            self._mark('": null' if self._in_key else '"')
            return i + 1
        m = _PLAIN.match(text, i)
        if m is not None:
            self.text += m.group()
            self._mark('": null' if self._in_key else '"')
            return m.end()
        c = text[i]
        if c == "\\":
            self._pending = c
            return i + 1
        if c == '"':
            self.text += c
            if self._in_key:
                self._state = "colon"
                self._mark(": null")
            else:
                self._value_end("")
            return i + 1
        self.text += json.dumps(c)[1:-1]  # a raw control character, escaped
        self._mark('": null' if self._in_key else '"')
        return i + 1


class BufferedScan(CallScan):
    """A reader that keeps the body's unread text and steps over it (`_advance`) until it
    needs more text or finds the block is not its format (state `stop`); it starts at a
    call's header (state `head`)."""

    def __init__(self, ctx: CallContext) -> None:
        super().__init__()
        self._ctx = ctx
        self._buf = ""
        self._state = "head"

    def feed(self, text: str) -> None:
        self._buf += text
        while self._state != "stop" and self._advance():
            pass

    def _advance(self) -> bool:
        """One step; False when more text is needed (or the block is not a call)."""
        raise NotImplementedError

    def _begin(self, m: re.Match[str] | None) -> str | None:
        """The function a complete header (`m`, group 1 the name) names, its text consumed;
        None while the header is incomplete, or when it names no allowed function (then
        nothing in this block is a call)."""
        if m is None:
            return None
        name = m.group(1).strip()
        if name not in self._ctx.allowed:
            self._state = "stop"
            return None
        self._buf = self._buf[m.end() :]
        return name


class HeadedJson(BufferedScan):
    """Calls written as a header naming the function, then a JSON object of arguments: `head`
    matches one header (group 1 the name, group 2 the model's id if any) and ends where the
    object starts; `between` matches what separates one call from the next header (None: one
    call per block)."""

    def __init__(
        self, ctx: CallContext, head: re.Pattern[str], between: re.Pattern[str] | None = None
    ) -> None:
        super().__init__(ctx)
        self._head, self._between = head, between
        self._json = JsonScan()

    def _advance(self) -> bool:
        if not self._buf:  # `between` may match nothing: wait for what follows a call
            return False
        if self._state == "head":
            m = self._head.match(self._buf)
            name = self._begin(m)
            if m is None or name is None:
                return False
            own = m.group(2) if m.re.groups >= 2 else None
            self.calls.append(PartialCall(name, own.strip() if own else None))
            self._state, self._json = "args", JsonScan()
            return True
        if self._state == "args":
            used = self._json.feed(self._buf)
            self._buf = self._buf[used:]
            call = self.calls[-1]
            call.args = self._json.certain
            if self._json.done:
                call.done = True
                self._state = "between" if self._between is not None else "stop"
                return True
            if self._json.broken:
                self._state = "stop"
            return False
        assert self._between is not None
        m = self._between.match(self._buf)
        if m is None:
            return False
        self._buf, self._state = self._buf[m.end() :], "head"
        return True

    def finish(self) -> None:
        if self.calls and not self.calls[-1].done:
            self.calls[-1].args = self._json.final()
            self.calls[-1].done = True


class EitherScan(CallScan):
    """Readers of a block's alternative forms: the first to begin a call reads the block."""

    def __init__(self, *scans: CallScan) -> None:
        super().__init__()
        self._scans = list(scans)

    def feed(self, text: str) -> None:
        for scan in self._scans:
            scan.feed(text)
        begun = [s for s in self._scans if s.calls]
        if begun:
            self._scans = begun[:1]
            self.calls = begun[0].calls

    def finish(self) -> None:
        for scan in self._scans:
            scan.finish()
