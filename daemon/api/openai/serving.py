"""OpenAI chat completions: translate to engine requests and back (text completions are
completions.py, the fields every body and chunk carries envelope.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.openai import logprobs as lp
from daemon.api.openai import translate
from daemon.api.openai.envelope import Meta, finish_reason, new_meta, progress, timed, with_timings
from daemon.api.openai.protocol import ChatCompletionRequest
from daemon.api.streams import sse
from daemon.core import safety, tools
from daemon.core.calls import CallArgs, CallParser, CallStart, Event, parse_message
from daemon.core.chat import ChatRun, count_prompt, start_chat
from daemon.core.choices import Policy, timings, usage
from daemon.core.reasoning import Thinking
from daemon.core.streams import Collected, collect_all, merge
from daemon.core.verbose import verbose_of
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import FinishReason
from daemon.errors import InvalidRequest

_LEGACY_PARAMS = {"tools": "functions", "tool_choice": "function_call"}


@dataclass(frozen=True)
class _Reply:
    """How the client asked to be answered (the shape, not the generation): the name it
    asked for, how many choices, SSE or one body, usage at the end, the prompt echoed,
    log-probabilities and in whose form."""

    model: str | None
    n: int
    stream: bool
    include_usage: bool
    echo: bool
    logprobs: int | None
    together: bool
    timings_per_token: bool = False
    verbose: bool = False


async def chat_input_tokens(
    registry: ModelRegistry, req: ChatCompletionRequest, policy: Policy
) -> dict[str, Any]:
    """POST /v1/chat/completions/input_tokens (llama-server's): the prompt's tokens."""
    chat_req = translate.chat(req.with_legacy_functions())
    return {"input_tokens": await count_prompt(registry, chat_req, req.model, policy)}


async def chat_completion(
    registry: ModelRegistry, req: ChatCompletionRequest, policy: Policy
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/chat/completions."""
    legacy = req.legacy_functions
    req = req.with_legacy_functions()
    reply = _Reply(
        req.model,
        req.n,
        req.stream,
        req.include_usage,
        req.echo,
        req.logprob_count,
        req.together_logprobs,
        req.timings_per_token,
        req.shows_verbose(policy.verbose),
    )
    try:
        chat_req = translate.chat(req)
        gen = translate.generation(req)
        run = await start_chat(registry, chat_req, gen, policy)
    except InvalidRequest as exc:
        if legacy:  # name the fields the client sent
            exc.param = _LEGACY_PARAMS.get(exc.param or "", exc.param)
        raise
    return await _answer(registry, reply, run, policy)


async def _answer(
    registry: ModelRegistry, reply: _Reply, run: ChatRun, policy: Policy
) -> dict[str, Any] | ServerSentEvent:
    """A started chat in OpenAI's shapes: one body, or chunks as SSE."""
    lm, handles, screened = run.lm, run.handles, run.guard is not None
    plan, rendered, think = run.prompt.plan, run.prompt.rendered, run.prompt.think
    meta = new_meta("chatcmpl", "chat.completion", registry.answering_name(reply.model, lm.name))
    chunk_meta = Meta(meta.id, meta.created, meta.model, "chat.completion.chunk")
    if run.refusal is not None:
        return _refused(meta, chunk_meta, reply, run.refusal)
    shape = _ChatLogprobs(lm, reply.together) if reply.logprobs is not None else None
    if reply.stream:
        if not screened:
            shown = _Shown(lm, rendered) if reply.verbose else None
            events = _chat_events(
                chunk_meta, handles, reply.include_usage, shape, policy, plan, think, shown
            )
        else:
            # The output check needs whole answers: generate, judge, then send each at once.
            events = _screened_events(chunk_meta, run, reply, shape, policy)
        return sse(timed(events, handles) if reply.timings_per_token else events, handles)
    results = await collect_all(handles)
    choices = [_chat_choice(i, r, shape, plan, think) for i, r in enumerate(results)]
    if screened:
        choices = await _screen(run, choices)
    body = {**meta.envelope(choices), "usage": usage(handles, policy), "timings": timings(handles)}
    if reply.verbose:
        body["__verbose"] = _Shown(lm, rendered).body(handles, results)
    if reply.echo:
        # Together semantics: the rendered prompt comes back beside the choices.
        scores = lp.together(results[0].prompt_logprobs, lm.model.piece) if shape else None
        body["prompt"] = [{"text": rendered, "logprobs": scores}]
    return body


def _chat_choice(
    i: int,
    r: Collected,
    shape: _ChatLogprobs | None,
    plan: tools.ToolPlan | None,
    think: Thinking | None = None,
) -> dict[str, Any]:
    reasoning, text = think.split(r.text) if think is not None else (None, r.text)
    content, calls = parse_message(plan, text)
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    legacy = plan is not None and plan.legacy
    if calls and legacy:
        message["function_call"] = calls[0].wire()["function"]
    elif calls:
        message["tool_calls"] = [c.wire() for c in calls]
    return {
        "index": i,
        "message": message,
        "logprobs": shape.render(r.logprobs) if shape else None,
        "finish_reason": _chat_finish(r.finish_reason, bool(calls), legacy),
    }


def _chat_finish(reason: FinishReason | None, called: bool, legacy: bool = False) -> str | None:
    """OpenAI reports a turn that ended on its own after calls as `tool_calls`
    (`function_call` for the legacy `functions` field)."""
    if called and reason is FinishReason.STOP:
        return "function_call" if legacy else "tool_calls"
    return finish_reason(reason)


def _refusal_choice(i: int, verdict: safety.Verdict) -> dict[str, Any]:
    return {
        "index": i,
        "message": {"role": "assistant", "content": verdict.refusal()},
        "logprobs": None,
        "finish_reason": "content_filter",
    }


async def _screen(run: ChatRun, choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replace every answer the safety model flags with a refusal."""
    verdicts = await run.check_answers([safety.answer_text(c["message"]) for c in choices])
    return [
        c if v.safe else _refusal_choice(c["index"], v)
        for c, v in zip(choices, verdicts, strict=True)
    ]


_NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "estimated_cost": 0.0}


def _refused(
    meta: Meta, chunk_meta: Meta, reply: _Reply, verdict: safety.Verdict
) -> dict[str, Any] | ServerSentEvent:
    """The answer to a conversation the safety model flagged: nothing was generated."""
    choices = [_refusal_choice(i, verdict) for i in range(reply.n)]
    if reply.stream:
        tail = _NO_USAGE if reply.include_usage else None
        return sse(_replay(chunk_meta, choices, tail), [])
    return {**meta.envelope(choices), "usage": _NO_USAGE}


async def _replay(
    meta: Meta,
    choices: list[dict[str, Any]],
    tail_usage: dict[str, Any] | None,
    shown: list[dict[str, Any]] | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """Finished choices as chunks: each whole answer in one delta with its finish_reason (and
    its `__verbose` from `shown`, as the unscreened stream puts it on its finishing chunk)."""
    for c in choices:
        delta = dict(c["message"])
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": k, **t} for k, t in enumerate(delta["tool_calls"])]
        chunk = meta.envelope(
            [
                {
                    "index": c["index"],
                    "delta": delta,
                    "logprobs": c["logprobs"],
                    "finish_reason": c["finish_reason"],
                }
            ]
        )
        if shown is not None:
            chunk["__verbose"] = shown[c["index"]]
        yield chunk
    if tail_usage is not None:
        yield {**meta.envelope([]), "usage": tail_usage}


async def _screened_events(
    meta: Meta, run: ChatRun, reply: _Reply, shape: _ChatLogprobs | None, policy: Policy
) -> AsyncIterator[dict[str, Any]]:
    plan, think = run.prompt.plan, run.prompt.think
    results = await collect_all(run.handles)
    choices = [_chat_choice(i, r, shape, plan, think) for i, r in enumerate(results)]
    choices = await _screen(run, choices)
    tail = usage(run.handles, policy) if reply.include_usage else None
    view = _Shown(run.lm, run.prompt.rendered) if reply.verbose else None
    shown = view.each(run.handles, results) if view is not None else None
    async for event in _replay(meta, choices, tail, shown):
        yield event


@dataclass(frozen=True)
class _Shown:
    """`__verbose` for a chat: each choice with the prompt as the template rendered it."""

    lm: LoadedModel
    rendered: str

    def of(self, i: int, handle: RequestHandle, result: Collected) -> dict[str, Any]:
        return verbose_of(i, self.rendered, handle, result, self.lm.model.detokenize)

    def each(self, handles: list[RequestHandle], results: list[Collected]) -> list[Any]:
        """Every choice's object, in order."""
        return [self.of(i, h, r) for i, (h, r) in enumerate(zip(handles, results, strict=True))]

    def body(self, handles: list[RequestHandle], results: list[Collected]) -> Any:
        """One choice's object, or a list of them for several."""
        shown = self.each(handles, results)
        return shown[0] if len(shown) == 1 else shown


@dataclass(frozen=True)
class _ChatLogprobs:
    """Chat logprobs in OpenAI's `content` shape or Together's token lists."""

    lm: LoadedModel
    together: bool

    def render(self, entries: Any) -> dict[str, Any]:
        piece = self.lm.model.piece
        return lp.together(entries, piece) if self.together else lp.chat_content(entries, piece)


def _deltas(event: Event, legacy: bool = False) -> list[dict[str, Any]]:
    """Content, or a call as OpenAI streams it: id and name first, then the arguments piece by
    piece; a call's end sends nothing more."""
    if isinstance(event, str):
        return [{"content": event}]
    if legacy:  # `function_call` carries the first call only, as the whole reply does
        if isinstance(event, CallStart) and event.index == 0:
            return [{"function_call": {"name": event.name, "arguments": ""}}]
        if isinstance(event, CallArgs) and event.index == 0:
            return [{"function_call": {"arguments": event.text}}]
        return []
    if isinstance(event, CallStart):
        head = {"index": event.index, "id": event.id, "type": "function"}
        return [{"tool_calls": [{**head, "function": {"name": event.name, "arguments": ""}}]}]
    if isinstance(event, CallArgs):
        return [{"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]}]
    return []


async def _chat_events(
    meta: Meta,
    handles: list[RequestHandle],
    include_usage: bool,
    shape: _ChatLogprobs | None,
    policy: Policy,
    plan: tools.ToolPlan | None = None,
    think: Thinking | None = None,
    shown: _Shown | None = None,
) -> AsyncIterator[dict[str, Any]]:
    role = {"role": "assistant", "content": ""}
    # What each choice generated, for its `__verbose` (on its finishing chunk).
    seen = [Collected("", FinishReason.ERROR, []) for _ in handles]
    yield meta.envelope(
        [
            {"index": i, "delta": role, "logprobs": None, "finish_reason": None}
            for i in range(len(handles))
        ]
    )
    # One parser per choice: a call is sent as it is read (its arguments piece by piece), text
    # outside calls as it comes, minus anything that may still turn out to be call markup.
    parsers = [CallParser(plan) for _ in handles]
    # Reasoning is split off first; tool calls are parsed in the answer only.
    splitters = [think.splitter() if think is not None else None for _ in handles]
    finished = 0
    legacy = plan is not None and plan.legacy
    async for i, chunk in merge(handles):
        if chunk.progress is not None:
            yield progress(meta.envelope(_no_delta(i)), chunk)
        parser, splitter = parsers[i], splitters[i]
        if shown is not None:
            seen[i].text += chunk.text
            seen[i].token_ids.extend(chunk.token_ids)
        logprobs = shape.render(chunk.logprobs) if shape and chunk.logprobs else None
        reasoning, text = splitter.feed(chunk.text) if splitter else ("", chunk.text)
        if splitter is not None and chunk.finish_reason is not None:
            more_reasoning, more_text = splitter.flush()
            reasoning, text = reasoning + more_reasoning, text + more_text
        events = parser.push(text)
        if chunk.finish_reason is not None:
            events += parser.finish()
        deltas: list[dict[str, Any]] = [{"reasoning_content": reasoning}] if reasoning else []
        for e in events:
            deltas += _deltas(e, legacy)
        if logprobs and not deltas:
            deltas = [{}]
        for n, delta in enumerate(deltas):
            yield meta.envelope(
                [
                    {
                        "index": i,
                        "delta": delta,
                        "logprobs": logprobs if n == 0 else None,
                        "finish_reason": None,
                    }
                ]
            )
        if chunk.finish_reason is not None:
            finished += 1
            last = with_timings(
                meta.envelope(
                    [
                        {
                            "index": i,
                            "delta": {},
                            "logprobs": None,
                            "finish_reason": _chat_finish(
                                chunk.finish_reason, parser.calls > 0, legacy
                            ),
                        }
                    ]
                ),
                handles,
                finished,
            )
            if shown is not None:
                seen[i].finish_reason = chunk.finish_reason
                last["__verbose"] = shown.of(i, handles[i], seen[i])
            yield last
    if include_usage:
        yield {**meta.envelope([]), "usage": usage(handles, policy)}


def _no_delta(i: int) -> list[dict[str, Any]]:
    return [{"index": i, "delta": {}, "logprobs": None, "finish_reason": None}]
