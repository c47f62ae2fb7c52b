"""OpenAI Responses: translate into the shared chat path; keep each conversation's KV state.

A turn that names `previous_response_id` renders the whole conversation as any chat would.
When the kept sequence of the previous turn is a prefix of that prompt, its KV state is
restored and only the rest (the new input) is prefilled; otherwise it is a full prefill.
The KV state is restored only on the very model file that computed it (`model_identity`,
the file's sha256): a chain continued after the model was replaced under the same name, or
under another model or adapter set, is recomputed from its text history instead.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.errors import OPENAI as OPENAI_SHAPE
from daemon.api.keepalive import keep_alive_arg
from daemon.api.responses import items as it
from daemon.api.responses.protocol import ResponsesRequest
from daemon.api.responses.store import ResponseStore, StoredResponse, kv_key
from daemon.api.streams import Named, named_sse
from daemon.core.calls import ToolCall
from daemon.core.choices import Policy, submit_choices
from daemon.core.prompt import ChatPrompt, build_chat
from daemon.core.request import (
    ChatRequest,
    FunctionSpec,
    JsonFormat,
    Message,
    NamedTool,
    ToolChoice,
)
from daemon.core.sampling import OPENAI, sampling_of
from daemon.core.turns import Reasoning, TurnEnd, run_turn, turn_events
from daemon.core.watch import leased
from daemon.engine.errors import IdBusy
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import FinishReason, SavedSequence
from daemon.errors import EdgedError, InvalidRequest, NotFound

_UNSUPPORTED = {
    "background": "background responses are not supported; every response is synchronous",
    "conversation": "conversation objects are not supported; chain turns with previous_response_id",
    "prompt": "prompt templates are not supported",
    "top_logprobs": "top_logprobs is not supported on /v1/responses",
    "max_tool_calls": "max_tool_calls is not supported",
}


def _refuse_unsupported(req: ResponsesRequest) -> None:
    """A field edged cannot honour is a 400 naming it, never a silent drop."""
    for name, why in _UNSUPPORTED.items():
        if getattr(req, name) not in (None, False):
            raise InvalidRequest(why, param=name)
    if req.include:
        raise InvalidRequest(f"include values {req.include} are not supported", param="include")
    if req.truncation == "auto":
        raise InvalidRequest(
            "truncation `auto` is not supported; edged never drops input", param="truncation"
        )


def _tools(req: ResponsesRequest) -> tuple[FunctionSpec, ...]:
    out = []
    for t in req.tools or []:
        if t.type != "function":
            raise InvalidRequest(
                f"tool type `{t.type}` is not supported; only function tools are", param="tools"
            )
        if t.name is None:
            raise InvalidRequest("a function tool needs a name", param="tools")
        out.append(FunctionSpec(t.name, t.description, t.parameters))
    return tuple(out)


def _tool_choice(req: ResponsesRequest) -> ToolChoice:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    if choice.type != "function" or not choice.name:
        raise InvalidRequest(
            f"tool_choice of type `{choice.type}` is not supported; name a function",
            param="tool_choice",
        )
    return NamedTool(choice.name)


def _format(req: ResponsesRequest) -> JsonFormat | None:
    fmt = req.text.format if req.text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JsonFormat()
    if fmt.schema_ is None:
        raise InvalidRequest("text.format json_schema needs a schema", param="text.format")
    return JsonFormat(fmt.schema_)


def _chat_request(req: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatRequest:
    """The turn's whole conversation (kept in the template's dict form) as a chat request."""
    return ChatRequest(
        messages=tuple(Message.of_template(m) for m in messages),
        tools=_tools(req),
        tool_choice=_tool_choice(req),
        parallel_calls=req.parallel_tool_calls,
        format=_format(req),
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
        format_param="text.format",
    )


def _resume(
    lm: LoadedModel, owner: str, prev: StoredResponse, chat: ChatPrompt
) -> tuple[list[int], SavedSequence] | None:
    """The previous turn's kept state, extended by this turn's new tokens, if it is a prefix."""
    key = kv_key(owner, prev.body["id"])
    try:
        saved = lm.store.claim(key)
    except IdBusy:
        return None
    lm.store.release(key, None)  # the entry stays: a conversation may branch from it again
    if saved is None or saved.state is None or list(saved.tokens + saved.pending) != prev.tokens:
        return None
    if saved.model_id != lm.identity:  # computed by another file of the model: recompute
        return None
    full = prev.tokens
    if chat.rendered.startswith(prev.covered):
        # Joining at the text level keeps the model's own tokens for its earlier answer.
        rest = chat.rendered[len(prev.covered) :]
        tail = lm.model.tokenize(rest, add_special=False, parse_special=True)
    elif chat.tokens[: len(full)] == full:
        tail = chat.tokens[len(full) :]
    else:
        return None
    if not tail:
        return None
    prompt = full + tail
    resume = SavedSequence(
        tokens=saved.tokens,
        pending=saved.pending + tuple(tail),
        n_prompt=len(prompt),
        state=saved.state,
        exact=saved.exact,
        lora=saved.lora,
        model_id=saved.model_id,
    )
    return prompt, resume


@dataclass
class _Job:
    """One response being generated, and what storing it needs."""

    id: str
    created_at: int
    req: ResponsesRequest
    model: str
    lm: LoadedModel
    chat: ChatPrompt
    prompt: list[int]
    handle: RequestHandle
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]
    owner: str
    store: ResponseStore

    def body(self, status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
        req = self.req
        text_format: dict[str, Any] = {"type": "text"}
        if req.text is not None and req.text.format is not None:
            text_format = req.text.format.model_dump(by_alias=True, exclude_none=True)
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": req.instructions,
            "max_output_tokens": req.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": req.parallel_tool_calls,
            "previous_response_id": req.previous_response_id,
            "store": req.store,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "text": {"format": text_format},
            "tool_choice": _wire_choice(req),
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "truncation": "disabled",
            "reasoning": {
                "effort": req.reasoning.effort if req.reasoning else None,
                "summary": None,
            },
            "usage": None,
            "metadata": req.metadata or {},
            "user": req.user,
        }

    def reasoning_tokens(self, output: list[dict[str, Any]]) -> int:
        """The thinking's length in tokens (its text re-tokenized: the engine counts the turn)."""
        text = "".join(p["text"] for o in output if o["type"] == "reasoning" for p in o["content"])
        return len(self.lm.model.tokenize(text, add_special=False, parse_special=False))

    def finish(self, output: list[dict[str, Any]], end: TurnEnd) -> dict[str, Any]:
        """The final response object; stored (with its conversation) when `store` is set."""
        done = self.body("incomplete" if end.reason is FinishReason.LENGTH else "completed", output)
        if end.reason is FinishReason.LENGTH:
            done["incomplete_details"] = {"reason": "max_output_tokens"}
        u = self.handle.usage
        done["usage"] = {
            "input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens(output)},
            "total_tokens": u.prompt_tokens + u.completion_tokens,
        }
        saved = self.handle.saved
        if self.req.store and saved is not None:
            # What the kept KV state holds, from the engine itself (chunks skip held-back tokens).
            tokens = list(saved.tokens + saved.pending)
            generated = self.lm.model.detokenize(tokens[len(self.prompt) :], special=True)
            self.store.put(
                self.owner,
                self.id,
                StoredResponse(
                    body=done,
                    input_items=self.input_items,
                    history=self.history + it.to_messages(output),
                    model=self.lm.name,
                    covered=self.chat.rendered + generated,
                    tokens=tokens,
                    model_identity=self.lm.identity,
                ),
            )
        return done


def _wire_choice(req: ResponsesRequest) -> Any:
    c = req.tool_choice
    if c is None:
        return "auto"
    return c if isinstance(c, str) else c.model_dump(exclude_none=True)


async def create_response(
    registry: ModelRegistry,
    store: ResponseStore,
    req: ResponsesRequest,
    owner: str,
    policy: Policy,
) -> dict[str, Any] | ServerSentEvent:
    """POST /v1/responses."""
    _refuse_unsupported(req)
    prev = None
    if req.previous_response_id is not None:
        prev = store.get(owner, req.previous_response_id)
        if prev is None:
            raise NotFound(
                f"previous response {req.previous_response_id!r} not found",
                param="previous_response_id",
            )
    input_items = it.input_items(req.input)
    history = (prev.history if prev else []) + it.to_messages(input_items)
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    chat_req = _chat_request(req, system + history)
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    chat = build_chat(lm, chat_req)
    prompt, extras = chat.tokens, chat.extras
    # Resumed only on the very file that computed it: a model replaced under the same name
    # recomputes the chain from its text history (as for a changed LoRA set).
    same = prev is not None and prev.model == lm.name and prev.model_identity == lm.identity
    resumed = _resume(lm, owner, prev, chat) if prev is not None and same else None
    if resumed is not None:
        prompt = resumed[0]
    resp_id = it.new_id("resp")
    key = kv_key(owner, resp_id)
    if req.store:
        lm.store.claim(key)  # a fresh id: nothing to continue, but the key is now ours
    try:
        extras = replace(extras, resume=resumed[1] if resumed else None, keep=req.store)
        sampling = sampling_of(req, OPENAI)
        handles = submit_choices(lm, [prompt], req.max_output_tokens, sampling, 1, policy, extras)
    except BaseException:
        if req.store:
            lm.store.release(key, None)
        raise
    if req.store:
        # Only a turn that ended normally is worth continuing; a cut-off one keeps nothing.
        handles[0].add_done_callback(
            lambda h: lm.store.release(
                key,
                h.saved if h.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) else None,
            )
        )
    job = _Job(
        resp_id,
        int(time.time()),
        req,
        req.model or lm.name,
        lm,
        chat,
        prompt,
        handles[0],
        input_items,
        history,
        owner,
        store,
    )
    if req.stream:
        return named_sse(_events(job), handles, _error_event)
    turn = await run_turn(handles[0], chat.plan, chat.think)
    output: list[dict[str, Any]] = []
    if turn.reasoning is not None:
        output.append(it.reasoning_item(it.new_id("rs"), turn.reasoning))
    if turn.content or not turn.calls:
        output.append(it.message_item(it.new_id("msg"), turn.content))
    output += [it.call_item(c) for c in turn.calls]
    return job.finish(output, turn.end)


def _error_event(exc: EdgedError) -> Named:
    err = OPENAI_SHAPE.wire(exc)["error"]
    return "error", {
        "type": "error",
        "code": err["code"],
        "message": err["message"],
        "param": err["param"],
    }


async def _events(job: _Job) -> AsyncIterator[Named]:
    """The semantic event sequence, each event numbered."""
    seq = 0
    output: list[dict[str, Any]] = []
    text: list[str] = []
    msg: dict[str, Any] | None = None

    def event(kind: str, **data: Any) -> Named:
        nonlocal seq
        seq += 1
        return kind, {"type": kind, "sequence_number": seq - 1, **data}

    def close_message() -> list[Named]:
        nonlocal msg
        assert msg is not None
        full = "".join(text)
        where = {"item_id": msg["id"], "output_index": len(output), "content_index": 0}
        part = {"type": "output_text", "text": full, "annotations": []}
        done = it.message_item(msg["id"], full)
        out = [
            event("response.output_text.done", **where, text=full, logprobs=[]),
            event("response.content_part.done", **where, part=part),
            event("response.output_item.done", output_index=len(output), item=done),
        ]
        output.append(done)
        msg = None
        text.clear()
        return out

    def open_message() -> list[Named]:
        nonlocal msg
        msg = it.message_item(it.new_id("msg"), "", status="in_progress")
        where = {"item_id": msg["id"], "output_index": len(output), "content_index": 0}
        part = {"type": "output_text", "text": "", "annotations": []}
        return [
            event("response.output_item.added", output_index=len(output), item=msg),
            event("response.content_part.added", **where, part=part),
        ]

    thoughts: list[str] = []
    rs: dict[str, Any] | None = None  # the open reasoning item

    def open_reasoning() -> list[Named]:
        nonlocal rs
        rs = it.reasoning_item(it.new_id("rs"), "", status="in_progress")
        where = {"item_id": rs["id"], "output_index": len(output), "content_index": 0}
        part = {"type": "reasoning_text", "text": ""}
        return [
            event("response.output_item.added", output_index=len(output), item=rs),
            event("response.content_part.added", **where, part=part),
        ]

    def close_reasoning() -> list[Named]:
        nonlocal rs
        assert rs is not None
        full = "".join(thoughts)
        where = {"item_id": rs["id"], "output_index": len(output), "content_index": 0}
        done = it.reasoning_item(rs["id"], full)
        out = [
            event("response.reasoning_text.done", **where, text=full),
            event("response.content_part.done", **where, part=done["content"][0]),
            event("response.output_item.done", output_index=len(output), item=done),
        ]
        output.append(done)
        rs = None
        return out

    yield event("response.created", response=job.body("in_progress", []))
    yield event("response.in_progress", response=job.body("in_progress", []))
    async for ev in turn_events(job.handle, job.chat.plan, job.chat.think):
        if rs is not None and not isinstance(ev, Reasoning):
            for e in close_reasoning():
                yield e
        if isinstance(ev, Reasoning):
            if rs is None:
                for e in open_reasoning():
                    yield e
            assert rs is not None
            thoughts.append(ev.text)
            yield event(
                "response.reasoning_text.delta",
                item_id=rs["id"],
                output_index=len(output),
                content_index=0,
                delta=ev.text,
            )
        elif isinstance(ev, str):
            if msg is None:
                for e in open_message():
                    yield e
            assert msg is not None
            text.append(ev)
            yield event(
                "response.output_text.delta",
                item_id=msg["id"],
                output_index=len(output),
                content_index=0,
                delta=ev,
                logprobs=[],
            )
        elif isinstance(ev, ToolCall):
            if msg is not None:
                for e in close_message():
                    yield e
            for e in _call_events(event, ev, len(output)):
                yield e
            output.append(it.call_item(ev))
        else:
            if msg is None and not any(o["type"] != "reasoning" for o in output):
                for e in open_message():  # an empty answer is still one (empty) message
                    yield e
            if msg is not None:
                for e in close_message():
                    yield e
            final = job.finish(output, ev)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield event(kind, response=final)


def _call_events(event: Any, call: ToolCall, index: int) -> list[Named]:
    started = it.call_item(call, status="in_progress")
    where = {"item_id": started["id"], "output_index": index}
    return [
        event("response.output_item.added", output_index=index, item=started),
        event("response.function_call_arguments.delta", **where, delta=call.arguments),
        event(
            "response.function_call_arguments.done",
            **where,
            arguments=call.arguments,
            name=call.name,
        ),
        event("response.output_item.done", output_index=index, item=it.call_item(call)),
    ]


def _owned(store: ResponseStore, owner: str, response_id: str) -> StoredResponse:
    entry = store.get(owner, response_id)
    if entry is None:
        raise NotFound(f"response {response_id!r} not found", param="response_id")
    return entry


def retrieve(store: ResponseStore, owner: str, response_id: str) -> dict[str, Any]:
    """GET /v1/responses/{id}."""
    return _owned(store, owner, response_id).body


def delete(
    registry: ModelRegistry, store: ResponseStore, owner: str, response_id: str
) -> dict[str, Any]:
    """DELETE /v1/responses/{id}: the response and its kept KV state."""
    entry = _owned(store, owner, response_id)
    store.delete(owner, response_id)
    # The registry keeps each model's store across unloads: drop the state even if unloaded.
    registry.store(entry.model).discard(kv_key(owner, response_id))
    return {"id": response_id, "object": "response", "deleted": True}


def input_items(
    store: ResponseStore,
    owner: str,
    response_id: str,
    order: str,
    limit: int,
    after: str | None,
) -> dict[str, Any]:
    """GET /v1/responses/{id}/input_items: this turn's input, paged like OpenAI lists."""
    data = list(_owned(store, owner, response_id).input_items)
    if order == "desc":
        data.reverse()
    if after is not None:
        ids = [d["id"] for d in data]
        if after not in ids:
            raise InvalidRequest(f"no input item {after!r} in this response", param="after")
        data = data[ids.index(after) + 1 :]
    page = data[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(data) > limit,
    }
