"""Building a chat prompt: tools, template rendering, tokens and grammar, shared by dialects.

OpenAI chat, Anthropic Messages and OpenAI Responses all translate their bodies into a
ChatCompletionRequest and come here, so a conversation renders the same way whatever the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from daemon.api.choices import Extras
from daemon.api.formats import schema_grammar
from daemon.api.openai import tools
from daemon.api.openai.protocol import ChatCompletionRequest, _Common
from daemon.api.reasoning import Thinking, template_vars
from daemon.api.watch import watched
from daemon.engine.handle import RequestHandle
from daemon.engine.loaded import LoadedModel
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


async def turn_events(
    lm: LoadedModel, handle: RequestHandle, plan: tools.ToolPlan | None
) -> AsyncIterator[tools.Event | TurnEnd]:
    """One handle's output as content text and tool calls, then a TurnEnd."""
    parser = tools.CallParser(plan)
    parts: list[str] = []
    async for chunk in handle.chunks():
        parts.append(chunk.text)
        for event in parser.push(chunk.text):
            yield event
        if chunk.finish_reason is not None:
            for event in parser.finish():
                yield event
            stop = handle.stop_sequence if chunk.finish_reason is FinishReason.STOP else None
            yield TurnEnd(chunk.finish_reason, stop, parser.calls, "".join(parts))
            return


@dataclass
class Turn:
    """A whole turn: its content, calls and how it ended."""

    content: str
    calls: list[tools.ToolCall]
    end: TurnEnd


async def run_turn(lm: LoadedModel, handle: RequestHandle, plan: tools.ToolPlan | None) -> Turn:
    """Wait for the turn to finish; cancel it if the client goes away first."""
    parts: list[str] = []
    calls: list[tools.ToolCall] = []
    try:
        with watched([handle]):
            async for event in turn_events(lm, handle, plan):
                if isinstance(event, TurnEnd):
                    return Turn("".join(parts), calls, event)
                if isinstance(event, str):
                    parts.append(event)
                else:
                    calls.append(event)
    finally:
        handle.cancel()
    raise AssertionError("a handle ended without a finish_reason")
