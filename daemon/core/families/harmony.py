"""gpt-oss's harmony format: messages on channels, reasoning on `analysis`, calls by recipient.

The model writes `<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final
<|message|>…` (the generation prompt ends with `<|start|>assistant`); a call is a message with a
recipient, `<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{..}<|call|>`
(the recipient may also come before the channel). The splitter turns analysis into reasoning,
final and plain commentary into the answer, and passes each call on to the call parser in one
canonical spelling, `<|channel|>commentary to=RECIPIENT<|message|>ARGS<|call|>`.
"""

from __future__ import annotations

import re

from daemon.core.families.base import CallContext, RawCall, Syntax, after, json_object
from daemon.core.families.streamed import CallScan, HeadedJson

CHANNEL, MESSAGE, START, CONSTRAIN = "<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"
END, CALL, RETURN = "<|end|>", "<|call|>", "<|return|>"
CALL_OPEN = f"{CHANNEL}commentary to="
_ENDS = (END, CALL, RETURN, START)
_HEADS = (CHANNEL, START)
_HEADER_MAX = 512  # a header longer than this is not one: the output is plain text
_CHANNEL_NAME = re.compile(r"<\|channel\|>\s*([A-Za-z_]+)")
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")
_CALL_HEAD = re.compile(r"\s*(?:functions\.)?([^\s<]+)\s*<\|message\|>\s*(?=\{)")


def _held(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of one of the markers."""
    best = 0
    for m in markers:
        for n in range(min(len(m) - 1, len(text)), best, -1):
            if m.startswith(text[-n:]):
                best = n
                break
    return best


class HarmonySplitter:
    """Feeds harmony output, returns (reasoning, content) deltas; calls stay in the content in
    their canonical spelling for the call parser."""

    def __init__(self) -> None:
        self._buf = ""
        self._state = "header"  # "header", "body", "plain" (not harmony after all)
        self._kind = ""  # the current body's: "reasoning", "content" or "call"

    @property
    def thinking(self) -> bool:
        """Whether the output is inside an analysis message."""
        return self._state == "body" and self._kind == "reasoning"

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and content this piece completes (either may be empty)."""
        self._buf += text
        reasoning: list[str] = []
        content: list[str] = []
        while self._buf:
            if self._state == "plain":
                content.append(self._buf)
                self._buf = ""
            elif self._state == "header":
                if not self._header(content):
                    break
            else:
                if not self._body(reasoning, content):
                    break
        return "".join(reasoning), "".join(content)

    def _header(self, content: list[str]) -> bool:
        head = self._buf.lstrip()
        if not head:
            return False
        if not head.startswith(_HEADS):
            if any(h.startswith(head) for h in _HEADS):
                return False  # a marker not complete yet
            self._state = "plain"
            return True
        at = self._buf.find(MESSAGE)
        if at < 0:
            if len(self._buf) > _HEADER_MAX:
                self._state = "plain"
                return True
            return False
        header, self._buf = self._buf[:at], self._buf[at + len(MESSAGE) :]
        channel = _CHANNEL_NAME.search(header)
        recipient = _RECIPIENT.search(header)
        self._state = "body"
        if recipient is not None and recipient.group(1) != "assistant":
            self._kind = "call"
            content.append(f"{CALL_OPEN}{recipient.group(1)}{MESSAGE}")
        elif channel is not None and channel.group(1) == "analysis":
            self._kind = "reasoning"
        else:
            self._kind = "content"
        return True

    def _body(self, reasoning: list[str], content: list[str]) -> bool:
        out = reasoning if self._kind == "reasoning" else content
        ends = [(i, m) for m in _ENDS if (i := self._buf.find(m)) >= 0]
        if not ends:
            keep = _held(self._buf, _ENDS)
            out.append(self._buf[: len(self._buf) - keep])
            self._buf = self._buf[len(self._buf) - keep :]
            return False
        at, marker = min(ends)
        out.append(self._buf[:at])
        # `<|start|>` opens the next message's header: it stays for the header to read.
        self._buf = self._buf[at if marker == START else at + len(marker) :]
        self._close(content)
        return True

    def _close(self, content: list[str]) -> None:
        if self._kind == "call":
            content.append(CALL)
        self._state, self._kind = "header", ""

    def flush(self) -> tuple[str, str]:
        """What is held back at the end (an unfinished header is markup, not text)."""
        rest, self._buf = self._buf, ""
        if self._state == "plain":
            return "", rest
        if self._state == "header":
            head = rest.lstrip()
            return "", "" if not head or head.startswith(_HEADS) else rest
        kind = self._kind
        content = [rest] if kind != "reasoning" else []
        self._close(content)
        return (rest if kind == "reasoning" else ""), "".join(content)


class HarmonyCalls(Syntax):
    """The splitter's call spelling: `<|channel|>commentary to=R<|message|>{..}<|call|>`."""

    openers = (CALL_OPEN,)
    closed = True
    ends = (CALL,)

    def close(self, opener: str, body: str) -> int | None:
        return after(body, CALL)

    def parse(self, opener: str, body: str, ctx: CallContext) -> list[RawCall] | None:
        recipient, sep, args = body.removesuffix(CALL).partition(MESSAGE)
        name = recipient.strip().removeprefix("functions.")
        obj = json_object(args)
        if not sep or obj is None or name not in ctx.allowed:
            return None
        return [RawCall(name, obj)]

    def scan(self, opener: str, ctx: CallContext) -> CallScan | None:
        return HeadedJson(ctx, _CALL_HEAD)
