"""Building a chat prompt: tools, template rendering, tokens and grammar.

Every chat dialect translates its body into a ChatRequest and comes here, so a conversation
renders the same way whatever the API.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from daemon.core import tools
from daemon.core.choices import Extras
from daemon.core.errors import to_api
from daemon.core.formats import request_grammar
from daemon.core.reasoning import Thinking, template_vars
from daemon.core.request import ChatRequest
from daemon.core.watch import request_owner
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.media import Medium
from daemon.errors import EdgedError, InvalidRequest


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
    req: ChatRequest,
    logprobs: int | None = None,
    prompt_logprobs: bool = False,
    max_pixels: int | None = None,
    max_seconds: float | None = None,
) -> ChatPrompt:
    """Render `req.messages` (with its tools) through the model's template and tokenize it.

    Everything that needs only the request and the template's text is decided first (the
    tool plan, the grammar, the template's variables); the model renders and tokenizes last.
    Images and audio stand in the text as media markers; the model's projector tokenizes and
    encodes them (which blocks: with media, call this off the event loop).
    """
    source = lm.template.source
    plan = tools.plan_tools(req, source)
    messages, tool_vars = tools.prompt_messages(req.messages, plan, source)
    extra = template_vars(req.template_kwargs, req.reasoning_effort, source)
    grammar = request_grammar(req.format, req.grammar, req.format_param)
    # A JSON format or a required call shapes the answer; a raw `grammar` may well write the
    # thinking block itself, so it leaves the split alone.
    constrained = req.format is not None
    trigger = None
    if plan is not None and plan.grammar is not None:
        grammar, constrained = plan.grammar, True
    elif plan is not None and grammar is None:
        # The model chooses whether to call; a call it opens is held to the family's grammar.
        lazy = tools.lazy_grammar(plan, req.parallel_calls, lm.model.control_token)
        # A schema llama.cpp cannot take leaves the call unconstrained, never refused.
        if lazy is not None and lm.grammar_ok(lazy[0]):
            grammar, trigger = lazy
    rendered = render(lm, req, messages, {**extra, **tool_vars})
    media = None
    if req.media:
        parts = [Medium(p.data, p.digest, p.kind) for p in req.media]
        # The request's key: embeddings are cached per key (asyncio.to_thread keeps context).
        tokens, media = lm.media_prompt(
            rendered, parts, max_pixels, request_owner(), max_seconds=max_seconds
        )
    else:
        tokens = lm.tokenize(rendered)
    final = req.messages[-1].content.strip()
    # A prefill (the prompt ends in the final message, not in a new turn) may itself have
    # opened the thinking block the output goes on with.
    continued = final if req.prefill and final and rendered.rstrip().endswith(final) else None
    think = Thinking.of(source, rendered, continued)
    if think is not None and constrained:
        # A schema or a required call constrains the answer from the first token: the
        # output is the answer even when the prompt opened a thinking block.
        think = think.answer_only()
    extras = Extras(grammar, trigger, logprobs, prompt_logprobs, media=media)
    return ChatPrompt(plan, rendered, tokens, extras, think)


def render(
    lm: LoadedModel, req: ChatRequest, messages: list[dict[str, Any]], extra: dict[str, Any]
) -> str:
    """The conversation through the template: answered in a new assistant turn, or, for a
    prefill, continued from the final message's last character (transformers' rule for
    `continue_final_message`: render it as a finished turn, cut after its content)."""
    if not req.prefill:
        return lm.render_chat(messages, generation_prompt=req.generation_prompt, **extra)
    rendered = lm.render_chat(messages, generation_prompt=False, **extra)
    final = str(messages[-1].get("content") or "")
    at = rendered.rfind(final.strip())
    if at >= 0:
        return rendered[: at + len(final.lstrip())]
    if req.continue_final:
        raise InvalidRequest(
            "the final message cannot be continued: the chat template does not render its "
            "text as sent",
            param="messages",
        )
    # The template rewrote the message (trimmed it, dropped a part): answer it instead.
    return lm.render_chat(messages, generation_prompt=True, **extra)


async def prepare_chat(
    lm: LoadedModel,
    req: ChatRequest,
    max_pixels: int,
    image_param: str,
    max_seconds: float | None = None,
) -> ChatPrompt:
    """`build_chat` for a dialect: a request with media is built off the event loop
    (decoding and encoding them blocks), and the engine's refusals of an image or audio clip
    name the dialect's field for it (`image_param`)."""
    if not req.media:
        return build_chat(lm, req)
    try:
        return await asyncio.to_thread(
            build_chat, lm, req, max_pixels=max_pixels, max_seconds=max_seconds
        )
    except EdgedError as exc:
        raise to_api(exc, media_names(image_param)) from exc


def media_names(param: str) -> dict[str, str]:
    """The engine's names for media inputs, all as the dialect's field `param`."""
    return {"image": param, "audio": param, "media": param}
