"""llama-server's /completion and /infill: translations into the one engine path and back."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

from daemon.api.framing import plain_sse
from daemon.api.llamacpp.errors import SHAPE
from daemon.api.llamacpp.protocol import CompletionRequest, InfillRequest, MediaPromptIn
from daemon.core.adapters import from_ids
from daemon.core.choices import Extras, Policy, submit_choices
from daemon.core.formats import schema_grammar
from daemon.core.infill import infill_tokens
from daemon.core.media import check_count, media_from_base64
from daemon.core.raw_media import prompt_text, raw_media_prompt
from daemon.core.sampling import LLAMA_CPP, sampling_of
from daemon.core.streams import Collected, collect_all, merge
from daemon.core.verbose import stop_fields
from daemon.core.watch import leased
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.media import MediaPrompt
from daemon.engine.types import FinishReason, TokenLogprob
from daemon.errors import ContextLengthExceeded, InvalidRequest

Body = dict[str, Any]


def _tokens(lm: LoadedModel, prompt: str | list[Any], first: bool) -> list[int]:
    """Text, ids, or a mix; BOS (where the model wants it) only before the first piece."""
    if isinstance(prompt, str):
        return lm.tokenize(prompt) if first else _plain(lm, prompt)
    out: list[int] = []
    for i, piece in enumerate(prompt):
        if isinstance(piece, str):
            out += _tokens(lm, piece, first and i == 0)
        else:
            out.append(piece)
    return out


def _plain(lm: LoadedModel, text: str) -> list[int]:
    return lm.model.tokenize(text, add_special=False, parse_special=True)


# A prompt's tokens (stand-ins at media positions), and its media's embeddings.
Prompt = tuple[list[int], MediaPrompt | None]


async def _media_prompt(lm: LoadedModel, p: MediaPromptIn, policy: Policy) -> Prompt:
    """`{"prompt_string", "multimodal_data"}`: one marker per file, which take their places in
    order (llama-server reads each file as image or audio by its bytes)."""
    if not p.multimodal_data:
        return _tokens(lm, p.prompt_string, True), None
    parts = tuple(media_from_base64(b, "prompt") for b in p.multimodal_data)
    return await raw_media_prompt(lm, p.prompt_string, parts, policy, "prompt")


async def prompts_of(lm: LoadedModel, req: CompletionRequest, policy: Policy) -> list[Prompt]:
    """One or several prompts: a list holding lists, objects (or only strings) is several."""
    p = req.prompt
    many = isinstance(p, list) and any(isinstance(x, list | MediaPromptIn) for x in p)
    if isinstance(p, list) and len(p) > 1 and all(isinstance(x, str) for x in p):
        many = True
    items = p if many else [p]
    if len(items) > policy.max_batch:  # before any image is decoded
        raise InvalidRequest(f"at most {policy.max_batch} prompts", param="prompt")
    files = sum(len(x.multimodal_data or ()) for x in items if isinstance(x, MediaPromptIn))
    check_count(files, policy, "prompt")
    prompts: list[Prompt] = []
    for x in items:
        if isinstance(x, MediaPromptIn):
            prompts.append(await _media_prompt(lm, x, policy))
        else:
            prompts.append((_tokens(lm, x, True), None))  # type: ignore[arg-type]
    for tokens, media in prompts:
        if media is None:
            lm.check_tokens(tokens)
    return prompts


def _grammar(req: CompletionRequest) -> str | None:
    if req.json_schema is not None:
        return schema_grammar(req.json_schema, "json_schema")
    return req.grammar or None


def _bias_tokens(lm: LoadedModel) -> Callable[[str], list[int]]:
    """How a logit_bias text becomes tokens: as it would appear inside a text, no BOS and no
    special tokens parsed (llama-server's rule)."""
    return lambda text: lm.model.tokenize(text, add_special=False, parse_special=False)


def _budget(lm: LoadedModel, prompt: list[int], n_predict: int, cap: int) -> int:
    room = lm.ctx_size - len(prompt)
    if room <= 0:
        raise ContextLengthExceeded(
            f"the prompt has {len(prompt)} tokens; the context is {lm.ctx_size}", param="prompt"
        )
    # -1 ("until the context is full") is still bounded by the daemon's cap on output tokens.
    return min(room, cap) if n_predict < 0 else min(n_predict, room)


def submit(
    lm: LoadedModel, prompts: list[Prompt], req: CompletionRequest, policy: Policy
) -> list[RequestHandle]:
    """Every prompt through `submit_choices`, one choice each, cancelled together on refusal."""
    if len(prompts) > policy.max_batch:
        raise InvalidRequest(f"at most {policy.max_batch} prompts", param="prompt")
    fields = sampling_of(
        req,
        LLAMA_CPP,
        n_ctx=lm.ctx_size,
        logit_bias=req.bias_map(lm.model.eog_tokens, _bias_tokens(lm)) or None,
        lora=from_ids(lm, req.lora),
    )
    extras = Extras(
        grammar=_grammar(req),
        logprobs=req.n_probs or None,
        progress=req.stream and req.return_progress,
        post_sampling=req.post_sampling_probs,
    )
    handles: list[RequestHandle] = []
    try:
        for p, media in prompts:
            budget = _budget(lm, p, req.n_predict, policy.max_tokens)
            own = extras if media is None else replace(extras, media=media)
            handles += submit_choices(lm, [p], budget, fields, 1, policy, own)
    except BaseException:
        for h in handles:
            h.cancel()
        raise
    return handles


def _piece(lm: LoadedModel, token: int) -> tuple[str, list[int]]:
    raw = lm.model.piece(token) if 0 <= token < lm.model.n_vocab else b""
    return raw.decode("utf-8", "replace"), list(raw)


def probabilities(
    lm: LoadedModel, entries: tuple[TokenLogprob, ...] | list[TokenLogprob], post: bool = False
) -> list[Body]:
    """`completion_probabilities` in llama-server's form: log-probabilities of the raw
    distribution, or (`post_sampling_probs`) probabilities among what the sampler kept."""
    score, tops = ("prob", "top_probs") if post else ("logprob", "top_logprobs")

    def value(lp: float) -> float:
        return math.exp(lp) if post else lp

    out = []
    for e in entries:
        text, raw = _piece(lm, e.token)
        top = []
        for t, lp in e.top:
            t_text, t_raw = _piece(lm, t)
            top.append({"id": t, "token": t_text, score: value(lp), "bytes": t_raw})
        out.append({"id": e.token, "token": text, score: value(e.logprob), "bytes": raw, tops: top})
    return out


def timings(handle: RequestHandle) -> Body:
    """Prompt and generation timings, as llama-server reports them (prompt includes queueing)."""
    end = time.monotonic()
    first = handle.first_token_at or end
    u = handle.usage
    prompt_n = max(0, u.prompt_tokens - u.cached_tokens)
    prompt_ms = (first - handle.submitted_at) * 1000
    predicted_ms = (end - first) * 1000
    return {
        "cache_n": u.cached_tokens,
        "prompt_n": prompt_n,
        "prompt_ms": prompt_ms,
        "prompt_per_token_ms": prompt_ms / prompt_n if prompt_n else 0.0,
        "prompt_per_second": prompt_n * 1000 / prompt_ms if prompt_ms > 0 else 0.0,
        "predicted_n": u.completion_tokens,
        "predicted_ms": predicted_ms,
        "predicted_per_token_ms": predicted_ms / u.completion_tokens
        if u.completion_tokens
        else 0.0,
        "predicted_per_second": (
            u.completion_tokens * 1000 / predicted_ms if predicted_ms > 0 else 0.0
        ),
    }


def settings_of(lm: LoadedModel, req: CompletionRequest, seed: int | None = None) -> Body:
    """The request's generation settings as llama-server reports them; `seed` is the one
    it ran with (its own, or the daemon's --seed), -1 for a random one."""
    return {
        "n_predict": req.n_predict,
        "seed": -1 if seed is None else seed,
        "temperature": req.temperature,
        "top_k": req.top_k,
        "top_p": req.top_p,
        "min_p": req.min_p,
        "typical_p": req.typical_p,
        "repeat_penalty": req.repeat_penalty,
        "repeat_last_n": req.repeat_last_n,
        "presence_penalty": req.presence_penalty,
        "frequency_penalty": req.frequency_penalty,
        "stop": req.stop,
        "n_probs": req.n_probs,
        "ignore_eos": req.ignore_eos,
        "stream": req.stream,
        "grammar": req.grammar or "",
        "n_ctx": lm.ctx_size,
    }


def _final(lm: LoadedModel, i: int, h: RequestHandle, r: Collected, req: CompletionRequest) -> Body:
    body: Body = {
        "index": i,
        "content": r.text,
        "tokens": list(r.token_ids) if req.return_tokens else [],
        "id_slot": -1,
        "stop": True,
        "model": lm.name,
        "tokens_predicted": h.usage.completion_tokens,
        "tokens_evaluated": h.usage.prompt_tokens,
        "tokens_cached": h.usage.prompt_tokens + h.usage.completion_tokens,
        "generation_settings": settings_of(lm, req, h.request.sampling.seed),
        "prompt": prompt_text(lm, h.request.prompt_tokens),
        "has_new_line": "\n" in r.text,
        "truncated": False,
        **stop_fields(lm.model.detokenize, r, req.stop),
        "timings": timings(h),
    }
    if req.n_probs:
        body["completion_probabilities"] = probabilities(lm, r.logprobs, req.post_sampling_probs)
    return body


async def complete(
    registry: ModelRegistry, req: CompletionRequest, policy: Policy
) -> Body | list[Body] | Any:
    """POST /completion: one result (a list for several prompts), or SSE events."""
    lm = await leased(registry, req.model)
    return await _serve(lm, await prompts_of(lm, req, policy), req, policy)


async def infill(registry: ModelRegistry, req: InfillRequest, policy: Policy) -> Body | Any:
    """POST /infill: fill-in-the-middle with the model's FIM tokens."""
    lm = await leased(registry, req.model)
    extra = [(f.filename, f.text) for f in req.input_extra]
    prompt = infill_tokens(lm, req.input_prefix, req.input_suffix, extra, req.prompt)
    return await _serve(lm, [(prompt, None)], req, policy)


async def _serve(
    lm: LoadedModel, prompts: list[Prompt], req: CompletionRequest, policy: Policy
) -> Body | list[Body] | Any:
    handles = submit(lm, prompts, req, policy)
    if req.stream:
        return plain_sse(_events(lm, handles, req), handles, SHAPE.wire)
    results = await collect_all(handles)
    bodies = [
        _final(lm, i, h, r, req) for i, (h, r) in enumerate(zip(handles, results, strict=True))
    ]
    return bodies[0] if len(bodies) == 1 else bodies


async def _events(
    lm: LoadedModel, handles: list[RequestHandle], req: CompletionRequest
) -> AsyncIterator[Body]:
    collected = [Collected("", FinishReason.ERROR, []) for _ in handles]
    parts: list[list[str]] = [[] for _ in handles]
    async for i, chunk in merge(handles):
        c = collected[i]
        parts[i].append(chunk.text)
        c.token_ids.extend(chunk.token_ids)
        c.logprobs.extend(chunk.logprobs)
        h = handles[i]
        if chunk.text or chunk.token_ids or chunk.progress is not None:
            event: Body = {
                "index": i,
                "content": chunk.text,
                "tokens": list(chunk.token_ids) if req.return_tokens else [],
                "stop": False,
                "id_slot": -1,
                "tokens_predicted": h.usage.completion_tokens,
                "tokens_evaluated": h.usage.prompt_tokens,
            }
            if req.timings_per_token:
                event["timings"] = timings(h)
            if chunk.progress is not None:
                event["prompt_progress"] = chunk.progress.wire()
            if req.n_probs and (chunk.text or chunk.token_ids):
                event["completion_probabilities"] = probabilities(
                    lm, chunk.logprobs, req.post_sampling_probs
                )
            yield event
        if chunk.finish_reason is not None:
            c.text = "".join(parts[i])
            c.finish_reason = chunk.finish_reason
            final = _final(lm, i, h, c, req)
            # The last event repeats no text: the content arrived in the events before it.
            final.update(content="", tokens=[])
            final.pop("completion_probabilities", None)
            yield final
