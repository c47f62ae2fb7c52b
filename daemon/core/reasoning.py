"""Reasoning output split from the answer, whole or while streaming, in the family's markers.

Models think aloud between markers their chat template knows about: `<think>…</think>` (Qwen3,
DeepSeek R1, SmolLM3), Granite 3.3's `<think>…</think><response>…</response>`, Command R7B's
`<|START_THINKING|>…<|END_THINKING|>`, gpt-oss's harmony `analysis` channel. The family
(daemon/core/families) tells which. The generation prompt may already open the block
(DeepSeek-R1 ends it with "<think>\\n"), so the split can start inside it. Streaming holds back
only text that could be the start of a marker; answer markers (`<response>`) are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from daemon.core.families import Harmony, ReasoningStyle, ThinkTags, family_of
from daemon.core.families.harmony import HarmonySplitter
from daemon.errors import InvalidRequest

__all__ = ["Harmony", "ReasoningSplitter", "ThinkTags", "Thinking", "detect", "split"]


def detect(template: str | None) -> ReasoningStyle | None:
    """The reasoning markers when a chat template knows about thinking, else None."""
    return family_of(template).reasoning if template else None


def opens_thinking(prompt: str, tags: ReasoningStyle) -> bool:
    """Whether the rendered prompt ends inside an open reasoning block."""
    return isinstance(tags, ThinkTags) and prompt.rstrip().endswith(tags.open)


def left_open(text: str, tags: ReasoningStyle) -> bool:
    """Whether `text` (a continued final message) opened a reasoning block it did not close."""
    return isinstance(tags, ThinkTags) and text.rfind(tags.open) > text.rfind(tags.close)


def _held(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest suffix of text that is a proper prefix of one of the tags."""
    best = 0
    for tag in tags:
        for n in range(min(len(tag) - 1, len(text)), best, -1):
            if tag.startswith(text[-n:]):
                best = n
                break
    return best


class Splitter(Protocol):
    """Feeds output pieces, returns (reasoning, content) deltas."""

    def feed(self, text: str) -> tuple[str, str]: ...
    def flush(self) -> tuple[str, str]: ...
    @property
    def thinking(self) -> bool: ...


class ReasoningSplitter:
    """Feeds text pieces, returns (reasoning, content) deltas; never splits a tag."""

    def __init__(self, tags: ThinkTags, *, started: bool = False) -> None:
        self.tags = tags
        # "start": nothing seen yet (a leading open tag starts thinking); "think"; "answer".
        self._state = "think" if started else "start"
        self._buf = ""
        # Newlines right after a tag are layout, not text: dropped even across pieces.
        self._strip = started
        self._answer_tags = tuple(t for t in (tags.answer_open, tags.answer_close) if t)

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
                keep = _held(self._buf, (self.tags.close,))
                reasoning.append(self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep :]
                break
            if not self._answer(content):
                break
        return "".join(reasoning), "".join(content)

    def _answer(self, content: list[str]) -> bool:
        """Answer text, minus the family's answer markers; False when waiting for more."""
        if not self._answer_tags:
            content.append(self._buf)
            self._buf = ""
            return True
        hits = [(i, t) for t in self._answer_tags if (i := self._buf.find(t)) >= 0]
        if hits:
            at, tag = min(hits)
            content.append(self._buf[:at])
            self._buf = self._buf[at + len(tag) :]
            self._strip = tag == self.tags.answer_open
            return True
        keep = _held(self._buf, self._answer_tags)
        content.append(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

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


def _splitter(tags: ReasoningStyle, started: bool) -> Splitter:
    if isinstance(tags, Harmony):
        return HarmonySplitter()
    return ReasoningSplitter(tags, started=started)


def saw_reasoning(text: str, tags: ReasoningStyle, started: bool) -> bool:
    """Whether an output opened a reasoning block (else its reasoning is None, not "")."""
    if isinstance(tags, Harmony):
        return "<|channel|>analysis" in text
    return started or text.lstrip().startswith(tags.open)


def split(text: str, tags: ReasoningStyle, *, started: bool = False) -> tuple[str | None, str]:
    """Whole output to (reasoning or None when there was none, content)."""
    splitter = _splitter(tags, started)
    r1, c1 = splitter.feed(text)
    r2, c2 = splitter.flush()
    reasoning = r1 + r2
    return (reasoning if saw_reasoning(text, tags, started) else None), c1 + c2


# Names the renderer itself binds (or tool plans fill): a client may not override them.
RESERVED_VARS = frozenset(
    {"messages", "add_generation_prompt", "bos_token", "eos_token", "tools", "tool_choice"}
)
# gpt-oss knows three levels; other efforts map to the nearest.
_HARMONY_EFFORT = {"none": "low", "minimal": "low", "low": "low", "medium": "medium"}


def template_vars(
    kwargs: dict[str, Any] | None, effort: str | None, template: str | None = None
) -> dict[str, Any]:
    """Extra chat-template variables: `chat_template_kwargs` plus `reasoning_effort`.

    Qwen3-style templates read `enable_thinking`; gpt-oss-style ones `reasoning_effort`.
    `reasoning_effort: "none"` also means `enable_thinking: false` unless set explicitly.
    Given the template, the effort is mapped to what its family reads: harmony's three
    levels, and Granite's and DeepSeek V3.1's `thinking` switch.
    """
    out = dict(kwargs or {})
    for key in out:
        if key in RESERVED_VARS or not key.isidentifier():
            raise InvalidRequest(
                f"chat_template_kwargs may not set {key!r}", param="chat_template_kwargs"
            )
    if effort is None:
        return out
    style = detect(template) if template is not None else None
    if isinstance(style, Harmony):
        out.setdefault("reasoning_effort", _HARMONY_EFFORT.get(effort, "high"))
        return out
    out.setdefault("reasoning_effort", effort)
    if effort == "none":
        out.setdefault("enable_thinking", False)
    if template is not None and style is not None:
        on = effort != "none"
        out.setdefault("enable_thinking", on)
        if "thinking" in template:
            out.setdefault("thinking", on)
    return out


@dataclass(frozen=True)
class Thinking:
    """How one request's output splits: the markers, and whether the prompt opened the block."""

    tags: ReasoningStyle
    started: bool

    @classmethod
    def of(cls, template: str | None, prompt: str, continued: str | None = None) -> Thinking | None:
        """For a reasoning model's rendered prompt; None for other models. `continued`: the
        final message a prefill continues, whose own open block the output goes on with."""
        tags = detect(template)
        if tags is None:
            return None
        started = opens_thinking(prompt, tags) or (
            continued is not None and left_open(continued, tags)
        )
        return cls(tags, started)

    def answer_only(self) -> Thinking:
        """The same tags for output that starts as the answer (a leading <think> still counts)."""
        return Thinking(self.tags, started=False)

    def splitter(self) -> Splitter:
        """A fresh streaming splitter for one choice."""
        return _splitter(self.tags, self.started)

    def split(self, text: str) -> tuple[str | None, str]:
        """Whole output to (reasoning or None, content)."""
        return split(text, self.tags, started=self.started)

    def saw(self, text: str) -> bool:
        """Whether this output opened a reasoning block."""
        return saw_reasoning(text, self.tags, self.started)
