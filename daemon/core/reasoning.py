"""Reasoning output: `<think>…</think>` split from the answer, whole or while streaming.

Models such as Qwen3 and DeepSeek-R1 think aloud between tags their chat template knows
about. A template that mentions both tags marks a reasoning model; its output is split
into `reasoning` (inside the tags) and `content` (after them). The generation prompt may
already open the block (DeepSeek-R1 ends it with "<think>\\n"), so the split can start
inside it. Streaming holds back only text that could be the start of a tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.errors import InvalidRequest


@dataclass(frozen=True)
class ThinkTags:
    """The markers around a model's reasoning."""

    open: str = "<think>"
    close: str = "</think>"


def detect(template: str | None) -> ThinkTags | None:
    """The tags when a chat template knows about thinking, else None."""
    tags = ThinkTags()
    if template and tags.open in template and tags.close in template:
        return tags
    return None


def opens_thinking(prompt: str, tags: ThinkTags) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block."""
    tail = prompt.rstrip()
    return tail.endswith(tags.open)


def _held(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ReasoningSplitter:
    """Feeds text pieces, returns (reasoning, content) deltas; never splits a tag."""

    def __init__(self, tags: ThinkTags, *, started: bool = False) -> None:
        self.tags = tags
        # "start": nothing seen yet (a leading open tag starts thinking); "think"; "answer".
        self._state = "think" if started else "start"
        self._buf = ""
        # Newlines right after a tag are layout, not text: dropped even across pieces.
        self._strip = started

    def feed(self, text: str) -> tuple[str, str]:
        """The reasoning and content this piece completes (either may be empty)."""
        self._buf += text
        reasoning, content = [], []
        while self._buf:
            if self._strip:
                self._buf = self._buf.lstrip("\n")
                if not self._buf:
                    break
                self._strip = False
            if self._state == "start":
                stripped = self._buf.lstrip()
                if stripped.startswith(self.tags.open):
                    self._buf = stripped[len(self.tags.open) :]
                    self._state, self._strip = "think", True
                    continue
                if not stripped or self.tags.open.startswith(stripped):
                    break  # whitespace or a partial open tag: wait for more
                self._state = "answer"
                continue
            if self._state == "think":
                at = self._buf.find(self.tags.close)
                if at >= 0:
                    reasoning.append(self._buf[:at])
                    self._buf = self._buf[at + len(self.tags.close) :]
                    self._state, self._strip = "answer", True
                    continue
                keep = _held(self._buf, self.tags.close)
                reasoning.append(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                break
            content.append(self._buf)
            self._buf = ""
        return "".join(reasoning), "".join(content)

    def flush(self) -> tuple[str, str]:
        """What is held back at the end of the output (an unclosed block stays reasoning)."""
        rest, self._buf = self._buf, ""
        if self._state == "think":
            return rest, ""
        return "", rest

    @property
    def thinking(self) -> bool:
        """Whether the output is still inside the reasoning block."""
        return self._state == "think"


def split(text: str, tags: ThinkTags, *, started: bool = False) -> tuple[str | None, str]:
    """Whole output to (reasoning or None when there was none, content)."""
    splitter = ReasoningSplitter(tags, started=started)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.flush()
    reasoning = r1 + r2
    saw = started or text.lstrip().startswith(tags.open)
    return (reasoning if saw else None), c1 + c2


# Names the renderer itself binds (or tool plans fill): a client may not override them.
RESERVED_VARS = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "tool_choice"}
)


def template_vars(kwargs: dict[str, Any] | None, effort: str | None) -> dict[str, Any]:
    """Extra chat-template variables: `chat_template_kwargs` plus `reasoning_effort`.

    Qwen3-style templates read `enable_thinking`; gpt-oss-style ones `reasoning_effort`.
    `reasoning_effort: "none"` also means `enable_thinking: false` unless set explicitly.
    """
    out = dict(kwargs or {})
    for key in out:
        if key in RESERVED_VARS or not key.isidentifier():
            raise InvalidRequest(
                f"chat_template_kwargs may not set {key!r}", param="chat_template_kwargs"
            )
    if effort is not None:
        out.setdefault("reasoning_effort", effort)
        if effort == "none":
            out.setdefault("enable_thinking", False)
    return out


@dataclass(frozen=True)
class Thinking:
    """How one request's output splits: the tags, and whether the prompt opened the block."""

    tags: ThinkTags
    started: bool

    @classmethod
    def of(cls, template: str | None, prompt: str) -> Thinking | None:
        """For a reasoning model's rendered prompt; None for other models."""
        tags = detect(template)
        return None if tags is None else cls(tags, opens_thinking(prompt, tags))

    def answer_only(self) -> Thinking:
        """The same tags for output that starts as the answer (a leading <think> still counts)."""
        return Thinking(self.tags, started=False)

    def splitter(self) -> ReasoningSplitter:
        """A fresh streaming splitter for one choice."""
        return ReasoningSplitter(self.tags, started=self.started)

    def split(self, text: str) -> tuple[str | None, str]:
        """Whole output to (reasoning or None, content)."""
        return split(text, self.tags, started=self.started)
