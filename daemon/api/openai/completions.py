"""OpenAI text completions (`/v1/completions`): prompts, echo, best_of, and the answer as one
body or SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.keepalive import keep_alive_arg
from daemon.api.openai import logprobs as lp
from daemon.api.openai import translate
from daemon.api.openai.envelope import Meta, finish_reason, new_meta, progress, timed, with_timings
from daemon.api.openai.protocol import CompletionRequest, _Common
from daemon.api.streams import sse
from daemon.core.choices import Extras, Policy, submit_choices, timings, usage
from daemon.core.formats import request_grammar
from daemon.core.streams import Collected, collect_all, merge
from daemon.core.verbose import verbose_of
from daemon.core.watch import leased
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import Chunk, FinishReason
from daemon.errors import InvalidRequest


def _extras(req: _Common, count: int | None, echo_scores: bool) -> Extras:
    fmt = translate.json_format(req.response_format)
    grammar = request_grammar(fmt, req.grammar, "response_format")
    progress = req.stream and req.return_progress
    return Extras(grammar=grammar, logprobs=count, prompt_logprobs=echo_scores, progress=progress)


def _completion_prompts(lm: LoadedModel, req: CompletionRequest) -> list[list[int]]:
    p = req.prompt
    if isinstance(p, str):
        prompts = [lm.tokenize(p)]
    elif all(isinstance(x, int) for x in p):
        prompts = [list(p)]  # type: ignore[arg-type]
    elif all(isinstance(x, str) for x in p):
        prompts = [lm.tokenize(s) for s in p]  # type: ignore[arg-type]
    else:
        prompts = [list(x) for x in p]  # type: ignore[union-attr]
    for tokens in prompts:
        lm.check_tokens(tokens)
    return prompts


@dataclass(frozen=True)
class _Echo:
    """What `echo` puts before a completion: the prompt text, and its scores if asked."""

    lm: LoadedModel
    prompts: list[list[int]]
    n: int

    def prompt_of(self, choice: int) -> list[int]:
        return self.prompts[choice // self.n]

    def text(self, choice: int) -> str:
        return self.lm.model.detokenize(self.prompt_of(choice))


def _completion_choice(
    i: int,
    r: Collected,
    lm: LoadedModel,
    echo: _Echo | None,
    count: int | None,
    source: int | None = None,
) -> dict[str, Any]:
    """Choice `i` of the answer, made from generated sequence `source` (default `i`)."""
    src = i if source is None else source
    text = r.text
    logprobs = None
    piece = lm.model.piece
    if echo is not None:
        prefix = echo.text(src)
        if count is not None:
            prompt = echo.prompt_of(src)
            entries = [None, *r.prompt_logprobs, *r.logprobs]
            tokens = prompt + [e.token for e in r.logprobs]
            logprobs = lp.completions(entries, tokens, piece)
        text = prefix + text
    elif count is not None:
        logprobs = lp.completions(r.logprobs, [e.token for e in r.logprobs], piece)
    return {
        "index": i,
        "text": text,
        "logprobs": logprobs,
        "finish_reason": finish_reason(r.finish_reason),
    }


async def completion(
    registry: ModelRegistry, req: CompletionRequest, policy: Policy
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/completions."""
    req.check_unsupported()
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    prompts = _completion_prompts(lm, req)
    count = req.logprob_count
    k = req.candidates
    extras = _extras(req, count, req.echo and count is not None)
    if k > req.n and count is None:
        extras = replace(extras, logprobs=0)  # ranking best_of needs the chosen tokens' scores
    try:
        handles = submit_choices(
            lm, prompts, req.token_limit, translate.sampling(req), k, policy, extras
        )
    except InvalidRequest as exc:
        if k > req.n and exc.param == "n":
            exc.param = "best_of"
        raise
    meta = new_meta("cmpl", "text_completion", registry.answering_name(req.model, lm.name))
    echo = _Echo(lm, prompts, k) if req.echo else None
    if req.stream:
        events = _completion_events(meta, handles, req, lm, echo, policy, prompts, k)
        return sse(timed(events, handles) if req.timings_per_token else events, handles)
    results = await collect_all(handles)
    picked = _best(results, k, req.n) if k > req.n else list(range(len(results)))
    choices = [
        _completion_choice(i, results[j], lm, echo, count, source=j) for i, j in enumerate(picked)
    ]
    body = {**meta.envelope(choices), "usage": usage(handles, policy), "timings": timings(handles)}
    if req.shows_verbose(policy.verbose):
        shown = [_shown(lm, prompts, k, j, handles[j], results[j]) for j in range(len(results))]
        body["__verbose"] = shown[0] if len(shown) == 1 else shown
    return body


def _shown(
    lm: LoadedModel, prompts: list[list[int]], k: int, j: int, h: RequestHandle, r: Collected
) -> dict[str, Any]:
    """`__verbose` of generated sequence `j` (of prompt j // k)."""
    prompt = lm.model.detokenize(prompts[j // k], special=True)
    return verbose_of(j, prompt, h, r, lm.model.detokenize)


def _best(results: list[Collected], k: int, n: int) -> list[int]:
    """For each prompt's `k` candidates, the indexes of the `n` with the highest total
    log-probability (OpenAI's `best_of`), best first."""
    out: list[int] = []
    for start in range(0, len(results), k):
        group = range(start, start + k)
        ranked = sorted(group, key=lambda j: -sum(e.logprob for e in results[j].logprobs))
        out.extend(ranked[:n])
    return out


async def _completion_events(
    meta: Meta,
    handles: list[RequestHandle],
    req: CompletionRequest,
    lm: LoadedModel,
    echo: _Echo | None,
    policy: Policy,
    prompts: list[list[int]],
    k: int,
) -> AsyncIterator[dict[str, Any]]:
    count = req.logprob_count
    piece = lm.model.piece
    verbose = req.shows_verbose(policy.verbose)
    # What each choice generated, for its `__verbose` (on its finishing chunk).
    seen = [Collected("", FinishReason.ERROR, []) for _ in handles]
    if echo is not None:
        for i in range(len(handles)):
            yield meta.envelope(
                [{"index": i, "text": echo.text(i), "logprobs": None, "finish_reason": None}]
            )
    finished = 0
    async for i, chunk in merge(handles):
        finished += chunk.finish_reason is not None
        if chunk.progress is not None:
            empty = {"index": i, "text": "", "logprobs": None, "finish_reason": None}
            yield progress(meta.envelope([empty]), chunk)
        if verbose:
            seen[i].text += chunk.text
            seen[i].token_ids.extend(chunk.token_ids)
        if chunk.text or chunk.finish_reason is not None or chunk.logprobs:
            event = meta.envelope([_stream_choice(i, chunk, count, piece)])
            if chunk.finish_reason is None:
                yield event
                continue
            event = with_timings(event, handles, finished)
            if verbose:
                seen[i].finish_reason = chunk.finish_reason
                event["__verbose"] = _shown(lm, prompts, k, i, handles[i], seen[i])
            yield event
    if req.include_usage:
        yield {**meta.envelope([]), "usage": usage(handles, policy)}


def _stream_choice(i: int, chunk: Chunk, count: int | None, piece: lp.Piece) -> dict[str, Any]:
    logprobs = None
    if count is not None and chunk.logprobs:
        logprobs = lp.completions(chunk.logprobs, [e.token for e in chunk.logprobs], piece)
    return {
        "index": i,
        "text": chunk.text,
        "logprobs": logprobs,
        "finish_reason": finish_reason(chunk.finish_reason),
    }
