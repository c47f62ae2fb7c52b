"""A generated turn as events: reasoning, content text and tool calls, then how it ended."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from daemon.core import tools
from daemon.core.calls import CallParser, Event, ToolCall
from daemon.core.reasoning import Thinking
from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.engine.types import FinishReason, PromptProgress


@dataclass(frozen=True)
class TurnEnd:
    """How a generated turn ended: the engine's reason, and the stop string that hit, if any."""

    reason: FinishReason
    stop_sequence: str | None
    calls: int
    text: str


@dataclass(frozen=True)
class Reasoning:
    """A piece of the model's thinking (the text inside `<think>…</think>`)."""

    text: str


class TurnParser:
    """One choice's output text as reasoning, answer text and tool calls (each begun, its
    arguments' pieces, ended), piece by piece.

    Thinking is split off first; tool calls are parsed in the answer only (call markup
    written while thinking is reasoning text, not a call). `budget` caps the thinking
    tokens: `spent` turns true once a turn still thinking has used them up.
    """

    def __init__(
        self, plan: tools.ToolPlan | None, think: Thinking | None, budget: int | None = None
    ) -> None:
        self.calls = CallParser(plan)
        self.splitter = think.splitter() if think is not None else None
        self.budget = budget
        self.thought = 0  # tokens generated while thinking

    def push(self, text: str, n_tokens: int = 0) -> list[Reasoning | Event]:
        """The events a piece of output completes."""
        if self.splitter is None:
            return list(self.calls.push(text))
        self.thought += n_tokens if self.splitter.thinking else 0
        reasoning, answer = self.splitter.feed(text)
        return self._events(reasoning, answer)

    @property
    def spent(self) -> bool:
        """Whether the thinking budget is used up while the output is still thinking."""
        s = self.splitter
        return (
            self.budget is not None
            and s is not None
            and s.thinking
            and (self.thought >= self.budget)
        )

    def finish(self) -> list[Reasoning | Event]:
        """What was held back, at the end of the output."""
        events: list[Reasoning | Event] = []
        if self.splitter is not None:
            events = self._events(*self.splitter.flush())
        return events + list(self.calls.finish())

    def _events(self, reasoning: str, answer: str) -> list[Reasoning | Event]:
        head: list[Reasoning | Event] = [Reasoning(reasoning)] if reasoning else []
        return head + list(self.calls.push(answer))


async def turn_events(
    handle: RequestHandle,
    plan: tools.ToolPlan | None,
    think: Thinking | None = None,
    budget: int | None = None,
) -> AsyncIterator[Reasoning | Event | PromptProgress | TurnEnd]:
    """One handle's output as reasoning, content text and tool calls' events, then a TurnEnd
    (and the prompt's progress first, where the request asked for it).

    A turn still thinking past `budget` tokens is cut there and ends as LENGTH.
    """
    parser = TurnParser(plan, think, budget)
    parts: list[str] = []
    async for chunk in handle.chunks():
        if chunk.progress is not None:
            yield chunk.progress
        parts.append(chunk.text)
        for event in parser.push(chunk.text, len(chunk.token_ids)):
            yield event
        spent = parser.spent
        if chunk.finish_reason is not None or spent:
            for event in parser.finish():
                yield event
            reason = chunk.finish_reason
            if reason is None:
                handle.cancel()  # the thinking budget is used up: the turn ends here
                reason = FinishReason.LENGTH
            stop = handle.stop_sequence if reason is FinishReason.STOP else None
            yield TurnEnd(reason, stop, parser.calls.calls, "".join(parts))
            return


@dataclass
class Turn:
    """A whole turn: its thinking (None when there was none), content, calls and end."""

    content: str
    calls: list[ToolCall]
    end: TurnEnd
    reasoning: str | None = None


async def run_turn(
    handle: RequestHandle,
    plan: tools.ToolPlan | None,
    think: Thinking | None = None,
    budget: int | None = None,
) -> Turn:
    """Wait for the turn to finish; cancel it if the client goes away first."""
    parts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    try:
        with watched([handle]):
            async for event in turn_events(handle, plan, think, budget):
                if isinstance(event, TurnEnd):
                    # Reasoning is None only when the output never opened a thinking block.
                    saw = think is not None and think.saw(event.text)
                    reasoning = "".join(thoughts) if saw else None
                    return Turn("".join(parts), calls, event, reasoning)
                if isinstance(event, Reasoning):
                    thoughts.append(event.text)
                elif isinstance(event, str):
                    parts.append(event)
                elif isinstance(event, ToolCall):  # a call's end: the whole call
                    calls.append(event)
    finally:
        handle.cancel()
    raise AssertionError("a handle ended without a finish_reason")
