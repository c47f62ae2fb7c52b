"""OpenAI Responses: translate into the shared chat path; keep each conversation's KV state.

The request becomes a core chat request here; `chain.py` resumes and stores the conversation
chain, `events.py` words a streamed turn as OpenAI's semantic events.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from litestar.response import ServerSentEvent

from daemon.api.keepalive import keep_alive_arg
from daemon.api.responses import items as it
from daemon.api.responses.chain import Job, resume
from daemon.api.responses.events import error_event, stream_events, timed
from daemon.api.responses.protocol import ResponsesRequest
from daemon.api.responses.store import ResponseStore, StoredResponse, kv_key
from daemon.api.streams import named_sse
from daemon.core.choices import Policy, submit_choices
from daemon.core.media import check_media, image_from_url
from daemon.core.media_sources import resolve_media
from daemon.core.prompt import prepare_chat
from daemon.core.request import (
    ChatRequest,
    FunctionSpec,
    JsonFormat,
    Message,
    NamedTool,
    ToolChoice,
)
from daemon.core.sampling import OPENAI, sampling_of
from daemon.core.turns import run_turn
from daemon.core.watch import leased
from daemon.engine.loading.registry import ModelRegistry
from daemon.engine.types import FinishReason
from daemon.errors import InvalidRequest, NotFound

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


def _core_message(m: dict[str, Any]) -> Message:
    """A kept message as the core's, its images (data URLs, see items.py) decoded."""
    msg = Message.of_template(m)
    urls = m.get("images") or ()
    return replace(msg, media=tuple(image_from_url(u, "input") for u in urls)) if urls else msg


def _chat_request(req: ResponsesRequest, messages: list[dict[str, Any]]) -> ChatRequest:
    """The turn's whole conversation (kept in the template's dict form) as a chat request."""
    return ChatRequest(
        messages=tuple(_core_message(m) for m in messages),
        tools=_tools(req),
        tool_choice=_tool_choice(req),
        parallel_calls=req.parallel_tool_calls,
        format=_format(req),
        reasoning_effort=req.reasoning.effort if req.reasoning else None,
        format_param="text.format",
    )


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
    chat_req = await resolve_media(chat_req, policy, "input")  # images by URL, where allowed
    check_media(chat_req, policy, "input")  # images over the limits: 400s before any load
    lm = await leased(registry, req.model, keep_alive_arg(req.model_fields_set, req.keep_alive))
    chat = await prepare_chat(lm, chat_req, policy.max_image_pixels, "input")
    prompt, extras = chat.tokens, chat.extras
    # A conversation holding images keeps no KV state (the next turn joins its tail by text,
    # where an image has no text to join at): its next turn renders it again, and the slot
    # or the prompt cache, which compare images by digest, give back what they still hold.
    keep_kv = req.store and extras.media is None
    # Resumed only on the very file that computed it: a model replaced under the same name
    # recomputes the chain from its text history (as for a changed LoRA set).
    same = prev is not None and prev.model == lm.name and prev.model_identity == lm.identity
    resumable = prev is not None and same and extras.media is None
    resumed = resume(lm, owner, prev, chat) if resumable else None
    if resumed is not None:
        prompt = resumed[0]
    resp_id = it.new_id("resp")
    key = kv_key(owner, resp_id)
    if keep_kv:
        lm.store.claim(key)  # a fresh id: nothing to continue, but the key is now ours
    try:
        extras = replace(
            extras,
            resume=resumed[1] if resumed else None,
            keep=keep_kv,
            progress=req.stream and req.return_progress,
        )
        sampling = sampling_of(req, OPENAI)
        handles = submit_choices(lm, [prompt], req.max_output_tokens, sampling, 1, policy, extras)
    except BaseException:
        if keep_kv:
            lm.store.release(key, None)
        raise
    if keep_kv:
        # Only a turn that ended normally is worth continuing; a cut-off one keeps nothing.
        handles[0].add_done_callback(
            lambda h: lm.store.release(
                key,
                h.saved if h.finish_reason in (FinishReason.STOP, FinishReason.LENGTH) else None,
            )
        )
    job = Job(
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
        events = stream_events(job)
        return named_sse(
            timed(events, handles) if req.timings_per_token else events, handles, error_event
        )
    turn = await run_turn(handles[0], chat.plan, chat.think)
    output: list[dict[str, Any]] = []
    if turn.reasoning is not None:
        output.append(it.reasoning_item(it.new_id("rs"), turn.reasoning))
    if turn.content or not turn.calls:
        output.append(it.message_item(it.new_id("msg"), turn.content))
    output += [it.call_item(c) for c in turn.calls]
    return job.finish(output, turn.end)


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
