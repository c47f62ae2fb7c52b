"""Turning one API request into engine requests: prompts × n choices, limits, seeds."""

from __future__ import annotations

from dataclasses import dataclass, replace

from daemon.api.sampling import SamplingFields
from daemon.config import Settings
from daemon.engine.loaded import LoadedModel
from daemon.engine.scheduler import RequestHandle
from daemon.engine.types import GenerationRequest, SamplingParams
from daemon.errors import InvalidRequest


@dataclass(frozen=True)
class Limits:
    """Caps every dialect applies to a request."""

    max_n: int = 16
    max_tokens: int = 32768
    max_batch: int = 64
    max_beams: int = 8


def limits_of(settings: Settings) -> Limits:
    """The limits configured in the daemon settings."""
    return Limits(
        max_n=settings.max_n,
        max_tokens=settings.max_tokens_cap,
        max_batch=settings.max_batch,
        max_beams=settings.max_beams,
    )


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


def submit_choices(
    lm: LoadedModel,
    prompts: list[list[int]],
    max_tokens: int | None,
    fields: SamplingFields,
    n: int,
    limits: Limits,
) -> list[RequestHandle]:
    """`n` choices for each prompt, in OpenAI order (prompt-major)."""
    if n > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n}", param="n")
    if max_tokens is not None and max_tokens > limits.max_tokens:
        raise InvalidRequest(f"max_tokens must be at most {limits.max_tokens}", param="max_tokens")
    sampling = fields.to_sampling()
    stops = fields.stop_list()
    requests = [
        GenerationRequest(p, lm.fit(p, max_tokens), choice_sampling(sampling, j), stops)
        for p in prompts
        for j in range(n)
    ]
    return submit_all(lm, requests)
