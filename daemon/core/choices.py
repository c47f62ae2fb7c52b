"""Turning one API request into engine requests: prompts × n choices, limits, seeds, usage."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from daemon.config import Settings
from daemon.core.adapters import request_adapters
from daemon.core.sampling import Sampling
from daemon.core.watch import request_owner, request_owner_limit
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.media import MediaPrompt
from daemon.engine.types import GenerationRequest, SamplingParams, SavedSequence
from daemon.errors import InvalidRequest


@dataclass(frozen=True)
class Policy:
    """Caps every dialect applies to a request, and the prices usage is billed at."""

    max_n: int = 16
    # The seed of a request that sets none (--seed); None: a random one each time.
    seed: int | None = None
    # Whether answers carry `__verbose` when the request does not say (--verbose).
    verbose: bool = False
    max_tokens: int = 32768
    max_batch: int = 64
    max_beams: int = 8
    max_images: int = 8
    max_image_bytes: int = 8 << 20
    max_image_pixels: int = 4096 * 4096
    max_audio_seconds: float = 300.0
    # Where images may come from besides inline data: files under a folder, hosts to fetch.
    media_dir: Path | None = None
    remote_media: tuple[str, ...] = ()
    remote_media_timeout: float = 10.0
    price_input: float = 0.0  # per million prompt tokens
    price_output: float = 0.0  # per million completion tokens


def policy_of(settings: Settings) -> Policy:
    """The policy configured in the daemon settings."""
    return Policy(
        max_n=settings.max_n,
        seed=None if settings.seed < 0 else settings.seed,
        verbose=settings.verbose,
        max_tokens=settings.max_tokens_cap,
        max_batch=settings.max_batch,
        max_beams=settings.max_beams,
        max_images=settings.max_images,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_audio_seconds=settings.max_audio_seconds,
        media_dir=settings.media_dir,
        remote_media=tuple(settings.allow_remote_media),
        remote_media_timeout=settings.remote_media_timeout,
        price_input=settings.price_input_per_million,
        price_output=settings.price_output_per_million,
    )


@dataclass(frozen=True)
class Extras:
    """Per-request engine options beyond sampling fields."""

    grammar: str | None = None
    # The token that starts `grammar` (a lazy call grammar under tool_choice auto), if any.
    grammar_trigger: int | None = None
    logprobs: int | None = None
    prompt_logprobs: bool = False
    # A kept sequence to continue (the prompt then only has to extend it), and whether to
    # keep this one; n must be 1 for either.
    resume: SavedSequence | None = None
    keep: bool = False
    # The prompt's images (their embeddings at the prompt's stand-in positions).
    media: MediaPrompt | None = None
    # Report the prompt's progress as it goes in (llama-server's `return_progress`).
    progress: bool = False
    # `logprobs` among the candidates the sampler kept (llama-server's post_sampling_probs).
    post_sampling: bool = False


_fork_groups = itertools.count()


def seeded(sampling: SamplingParams, policy: Policy) -> SamplingParams:
    """`sampling` with the daemon's default seed where the request set none."""
    if sampling.seed is not None or policy.seed is None:
        return sampling
    return replace(sampling, seed=policy.seed)


def choice_sampling(sampling: SamplingParams, index: int) -> SamplingParams:
    """Choice `index` of a seeded request draws from seed + index: distinct yet reproducible."""
    if index == 0 or sampling.seed is None:
        return sampling
    return replace(sampling, seed=sampling.seed + index)


def submit_all(lm: LoadedModel, requests: list[GenerationRequest]) -> list[RequestHandle]:
    """Submit several requests; if one is refused, cancel those already queued."""
    handles: list[RequestHandle] = []
    try:
        for r in requests:
            handles.append(lm.submit(r))
    except Exception:
        for h in handles:
            h.cancel()
        raise
    return handles


def _sampling(
    lm: LoadedModel, fields: Sampling, grammar: str | None, trigger: int | None = None
) -> SamplingParams:
    sampling = fields.params
    n_vocab = lm.model.n_vocab
    if any(not 0 <= t < n_vocab for t, _ in sampling.logit_bias):
        raise InvalidRequest(f"logit_bias token ids must be in [0, {n_vocab})", param="logit_bias")
    if grammar is not None:
        if not lm.grammar_ok(grammar):
            raise InvalidRequest(
                "the grammar does not parse (GBNF with a root rule)", param="grammar"
            )
        triggers = () if trigger is None else (trigger,)
        sampling = replace(sampling, grammar=grammar, grammar_triggers=triggers)
    return sampling


def submit_choices(
    lm: LoadedModel,
    prompts: list[list[int]],
    max_tokens: int | None,
    fields: Sampling,
    n: int,
    policy: Policy,
    extras: Extras = Extras(),
) -> list[RequestHandle]:
    """`n` choices for each prompt, in OpenAI order (prompt-major)."""
    if n > policy.max_n:
        raise InvalidRequest(f"n must be at most {policy.max_n}", param="n")
    if max_tokens is not None and max_tokens > policy.max_tokens:
        raise InvalidRequest(f"max_tokens must be at most {policy.max_tokens}", param="max_tokens")
    sampling = seeded(_sampling(lm, fields, extras.grammar, extras.grammar_trigger), policy)
    lora = request_adapters(lm, fields.lora)
    if extras.resume is not None and extras.resume.lora != lora:
        # The kept KV was computed under other adapters: the prompt (the whole history) is
        # computed again under this request's own set instead of continuing it.
        extras = replace(extras, resume=None)
    stops = fields.stops
    requests = []
    for p in prompts:
        limit = lm.fit(p, max_tokens)
        group = next(_fork_groups) if n > 1 else None
        requests.extend(
            GenerationRequest(
                p,
                limit,
                choice_sampling(sampling, j),
                stops,
                logprobs=extras.logprobs,
                prompt_logprobs=extras.prompt_logprobs,
                fork_group=group,
                fork_size=n,
                owner=request_owner(),
                owner_limit=request_owner_limit(),
                resume=extras.resume,
                keep=extras.keep,
                lora=lora,
                media=extras.media,
                progress=extras.progress,
                post_sampling=extras.post_sampling,
            )
            for j in range(n)
        )
    worker = lm.generator()
    if n > worker.n_slots:
        raise InvalidRequest(f"n must be at most the model's {worker.n_slots} slots", param="n")
    capacity = worker.n_slots + worker.max_queue
    if len(requests) > capacity:
        # More sequences than slots and queue hold even when idle: a 429 would invite a retry
        # that can never succeed.
        raise InvalidRequest(
            f"{len(prompts)} prompt(s) × n={n} is {len(requests)} sequences; the model holds at "
            f"most {capacity} ({worker.n_slots} slots + {worker.max_queue} queued)",
            param="n" if n > 1 else "prompt",
        )
    return submit_all(lm, requests)


def usage(handles: list[RequestHandle], policy: Policy) -> dict[str, Any]:
    """OpenAI usage, with `estimated_cost` as DeepInfra reports it (0 when no price is set).

    Choices of one prompt share its prompt tokens, which are counted once per prompt.
    """
    prompt, cached = _prompt_counts(handles)
    completion = sum(h.usage.completion_tokens for h in handles)
    cost = (prompt * policy.price_input + completion * policy.price_output) / 1e6
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "estimated_cost": cost,
    }


def _prompt_counts(handles: list[RequestHandle]) -> tuple[int, int]:
    """Prompt tokens and prefix-cache hits, counted once per distinct prompt."""
    seen: set[int] = set()
    prompt = cached = 0
    for h in handles:
        key = id(h.request.prompt_tokens)
        if key not in seen:
            seen.add(key)
            prompt += h.usage.prompt_tokens
            cached += h.usage.cached_tokens
    return prompt, cached


def timings(handles: list[RequestHandle]) -> dict[str, Any]:
    """llama-server's per-response `timings`: prompt processing and generation, ms and tok/s.

    prompt_ms runs from submission to the first token (queueing included: what a client
    waits); predicted_ms from the first token to the last. Over several choices the spans
    run from the earliest start to the latest end.
    """
    prompt, cached = _prompt_counts(handles)
    predicted = sum(h.usage.completion_tokens for h in handles)
    now = time.monotonic()
    start = min((h.submitted_at for h in handles), default=now)
    firsts = [h.first_token_at for h in handles if h.first_token_at is not None]
    first = min(firsts, default=now)
    end = max((h.finished_at or now for h in handles), default=now)
    prompt_ms = max(0.0, (first - start) * 1000.0)
    predicted_ms = max(0.0, (end - first) * 1000.0) if firsts else 0.0
    return {
        "cache_n": cached,
        "prompt_n": prompt - cached,
        "prompt_ms": prompt_ms,
        "prompt_per_second": _per_second(prompt - cached, prompt_ms),
        "predicted_n": predicted,
        "predicted_ms": predicted_ms,
        "predicted_per_second": _per_second(predicted, predicted_ms),
    }


def _per_second(n: int, ms: float) -> float:
    return n * 1000.0 / ms if ms > 0 else 0.0
