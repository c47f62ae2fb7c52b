"""Starting a chat: a dialect's translated request in, running engine requests out.

A dialect calls `start_chat` once with its conversation (a ChatRequest) and how to answer it
(a Generation); everything between (tool checks before any model loads, the lease, the
prompt, the safety model's look at the input, the submission) happens here, in this order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from daemon.core import tools
from daemon.core.choices import Policy, submit_choices
from daemon.core.errors import translated
from daemon.core.media import check_media
from daemon.core.media_sources import resolve_media
from daemon.core.prompt import ChatPrompt, build_chat, media_names, prepare_chat
from daemon.core.request import ChatRequest, Message
from daemon.core.safety import Guard, Verdict
from daemon.core.sampling import Sampling
from daemon.core.watch import leased
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.errors import InvalidRequest


@dataclass(frozen=True)
class Generation:
    """How to answer: which model, how long, how many choices, how sampled, what else."""

    model: str | None
    sampling: Sampling
    max_tokens: int | None = None
    n: int = 1
    keep_alive: float | str | None = "default"
    logprobs: int | None = None  # alternatives per token; None: no log-probabilities
    prompt_logprobs: bool = False
    safety_model: str | None = None
    # Report the prompt's progress as it goes in (Chunk.progress; a streamed answer's).
    progress: bool = False
    # The dialect's names for engine inputs, for errors (a chat's prompt is its `messages`).
    names: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ChatRun:
    """A started chat: its model, prompt and running choices, or the input's refusal; with
    a safety model, what the answers are judged against."""

    lm: LoadedModel
    prompt: ChatPrompt
    handles: list[RequestHandle]
    guard: Guard | None = None
    refusal: Verdict | None = None  # set when the safety model refused the input
    messages: tuple[Message, ...] = ()  # the conversation the answers reply to

    async def check_answers(self, answers: list[str]) -> list[Verdict]:
        """The safety model's verdict on each answer (all safe without one)."""
        if self.guard is None:
            return [Verdict(True) for _ in answers]
        return await self.guard.check_outputs(self.messages, answers)


async def start_chat(
    registry: ModelRegistry, req: ChatRequest, gen: Generation, policy: Policy
) -> ChatRun:
    """Check, lease, render, screen the input, submit `gen.n` choices."""
    tools.check_request(req)  # a malformed tool list is a 400 before any model loads
    req = await resolve_media(req, policy, "messages")  # images by URL, where allowed
    check_media(req, policy)  # so are images over the limits
    if req.media and gen.prompt_logprobs:
        raise InvalidRequest(
            "prompt log-probabilities (echo) cannot score an image's or audio's positions",
            param="echo",
        )
    # The engine's errors name its inputs: a chat's prompt (and its media) are `messages`.
    names = {**media_names("messages"), **gen.names} if req.media else gen.names
    with translated(names):
        lm = await leased(registry, gen.model, gen.keep_alive)
        if req.media:
            # Decoding, tokenizing and encoding media blocks: off the event loop.
            prompt = await asyncio.to_thread(
                build_chat,
                lm,
                req,
                gen.logprobs,
                gen.prompt_logprobs,
                policy.max_image_pixels,
                policy.max_audio_seconds,
            )
        else:
            prompt = build_chat(lm, req, gen.logprobs, gen.prompt_logprobs)
        guard = None
        if gen.safety_model is not None:
            guard = await Guard.open(registry, gen.safety_model, policy)
            verdict = await guard.check_input(req.messages)
            if not verdict.safe:
                return ChatRun(lm, prompt, [], guard, verdict, req.messages)
        extras = replace(prompt.extras, progress=gen.progress)
        handles = submit_choices(
            lm, [prompt.tokens], gen.max_tokens, gen.sampling, gen.n, policy, extras
        )
    return ChatRun(lm, prompt, handles, guard, messages=req.messages)


async def count_prompt(
    registry: ModelRegistry, req: ChatRequest, model: str | None, policy: Policy
) -> int:
    """The prompt's tokens as `model` would see them, nothing generated (Anthropic's
    count_tokens, llama-server's /chat/completions/input_tokens): its tools checked, its
    media read, checked and encoded as a chat's would be."""
    tools.check_request(req)
    req = await resolve_media(req, policy, "messages")
    check_media(req, policy)
    lm = await leased(registry, model)
    prompt = await prepare_chat(
        lm, req, policy.max_image_pixels, "messages", policy.max_audio_seconds
    )
    return len(prompt.tokens)
