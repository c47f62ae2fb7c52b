"""Building a chat prompt: tools, template rendering, tokens and grammar, shared by dialects.

OpenAI chat, Anthropic Messages and OpenAI Responses all translate their bodies into a
ChatCompletionRequest and come here, so a conversation renders the same way whatever the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from daemon.api.openai.protocol import ChatCompletionRequest, _Common
from daemon.core import tools
from daemon.core.choices import Extras
from daemon.core.formats import schema_grammar
from daemon.core.reasoning import Thinking, template_vars
from daemon.core.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.types import FinishReason
from daemon.errors import InvalidRequest


def grammar_of(req: _Common, param: str = "response_format") -> str | None:
    """The GBNF that constrains decoding: a raw `grammar`, or one derived from the schema."""
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return req.grammar
    if req.grammar is not None:
        raise InvalidRequest("use either grammar or response_format, not both", param="grammar")
    if fmt.type == "json_schema" and fmt.json_schema is None:
        raise InvalidRequest("json_schema needs a json_schema member", param=param)
    return schema_grammar(fmt.schema_or_none(), param)


@dataclass(frozen=True)
class ChatPrompt:
    """A conversation ready to submit: its tool plan, rendered text, tokens and extras, and
    how to split reasoning from the answer (None: the template does not think)."""

    plan: tools.ToolPlan | None
    rendered: str
    tokens: list[int]
    extras: Extras
    think: Thinking | None = None


def build_chat(
    lm: LoadedModel,
    req: ChatCompletionRequest,
    logprobs: int | None = None,
    prompt_logprobs: bool = False,
    format_param: str = "response_format",
    legacy: bool = False,
) -> ChatPrompt:
    """Render `req.messages` (with its tools) through the model's template and tokenize it."""
    plan = tools.plan_tools(req, lm.template.source, legacy=legacy)
    messages, tool_vars = tools.prompt_messages(req.messages, plan, lm.template.source)
    extra = template_vars(req.chat_template_kwargs, req.reasoning_effort)
    rendered = lm.render_chat(messages, **extra, **tool_vars)
    tokens = lm.tokenize(rendered)
    grammar = grammar_of(req, format_param)
    # A JSON format or a required call shapes the answer; a raw `grammar` may well write the
    # thinking block itself, so it leaves the split alone.
    fmt = req.response_format
    constrained = fmt is not None and fmt.type != "text"
    if plan is not None and plan.grammar is not None:
        grammar, constrained = plan.grammar, True
    think = Thinking.of(lm.template.source, rendered)
    if think is not None and constrained:
        # A schema or a required call constrains the answer from the first token: the
        # output is the answer even when the prompt opened a thinking block.
        think = think.answer_only()
    extras = Extras(grammar, logprobs, prompt_logprobs)
    return ChatPrompt(plan, rendered, tokens, extras, think)


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
    """One choice's output text as reasoning, answer text and tool calls, piece by piece.

    Thinking is split off first; tool calls are parsed in the answer only (call markup
    written while thinking is reasoning text, not a call). `budget` caps the thinking
    tokens: `spent` turns true once a turn still thinking has used them up.
    """

    def __init__(
        self, plan: tools.ToolPlan | None, think: Thinking | None, budget: int | None = None
    ) -> None:
        self.calls = tools.CallParser(plan)
        self.splitter = think.splitter() if think is not None else None
        self.budget = budget
        self.thought = 0  # tokens generated while thinking

    def push(self, text: str, n_tokens: int = 0) -> list[Reasoning | tools.Event]:
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

    def finish(self) -> list[Reasoning | tools.Event]:
        """What was held back, at the end of the output."""
        events: list[Reasoning | tools.Event] = []
        if self.splitter is not None:
            events = self._events(*self.splitter.flush())
        return events + list(self.calls.finish())

    def _events(self, reasoning: str, answer: str) -> list[Reasoning | tools.Event]:
        head: list[Reasoning | tools.Event] = [Reasoning(reasoning)] if reasoning else []
        return head + list(self.calls.push(answer))


async def turn_events(
    lm: LoadedModel,
    handle: RequestHandle,
    plan: tools.ToolPlan | None,
    think: Thinking | None = None,
    budget: int | None = None,
) -> AsyncIterator[Reasoning | tools.Event | TurnEnd]:
    """One handle's output as reasoning, content text and tool calls, then a TurnEnd.

    A turn still thinking past `budget` tokens is cut there and ends as LENGTH.
    """
    parser = TurnParser(plan, think, budget)
    parts: list[str] = []
    async for chunk in handle.chunks():
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
    calls: list[tools.ToolCall]
    end: TurnEnd
    reasoning: str | None = None


async def run_turn(
    lm: LoadedModel,
    handle: RequestHandle,
    plan: tools.ToolPlan | None,
    think: Thinking | None = None,
    budget: int | None = None,
) -> Turn:
    """Wait for the turn to finish; cancel it if the client goes away first."""
    parts: list[str] = []
    thoughts: list[str] = []
    calls: list[tools.ToolCall] = []
    try:
        with watched([handle]):
            async for event in turn_events(lm, handle, plan, think, budget):
                if isinstance(event, TurnEnd):
                    # Reasoning is None only when the output never opened a thinking block.
                    saw = think is not None and (
                        think.started or event.text.lstrip().startswith(think.tags.open)
                    )
                    reasoning = "".join(thoughts) if saw else None
                    return Turn("".join(parts), calls, event, reasoning)
                if isinstance(event, Reasoning):
                    thoughts.append(event.text)
                elif isinstance(event, str):
                    parts.append(event)
                else:
                    calls.append(event)
    finally:
        handle.cancel()
    raise AssertionError("a handle ended without a finish_reason")
