"""A streamed response as OpenAI's semantic events: items and content parts opened,
deltas, closed, each event numbered; an error mid-stream is one `error` event."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from daemon.api.errors import OPENAI as OPENAI_SHAPE
from daemon.api.responses import items as it
from daemon.api.responses.chain import Job
from daemon.api.streams import Named
from daemon.core.calls import CallArgs, CallStart, ToolCall
from daemon.core.choices import timings
from daemon.core.turns import Reasoning, turn_events
from daemon.engine.handle import RequestHandle
from daemon.engine.types import PromptProgress
from daemon.errors import EdgedError


def error_event(exc: EdgedError) -> Named:
    """A failure mid-stream as the one `error` event, in OpenAI's words."""
    err = OPENAI_SHAPE.wire(exc)["error"]
    return "error", {
        "type": "error",
        "code": err["code"],
        "message": err["message"],
        "param": err["param"],
    }


async def timed(events: AsyncIterator[Named], handles: list[RequestHandle]) -> AsyncIterator[Named]:
    """llama-server's `timings_per_token`: every event carries the timings so far."""
    async for name, data in events:
        yield name, {**data, "timings": timings(handles)}


async def stream_events(job: Job) -> AsyncIterator[Named]:
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

    call_item_id = ""  # the function_call item whose arguments are streaming
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
        elif isinstance(ev, CallStart):
            if msg is not None:
                for e in close_message():
                    yield e
            started = it.call_item(ToolCall(ev.name, "", ev.id), status="in_progress")
            call_item_id = started["id"]
            yield event("response.output_item.added", output_index=len(output), item=started)
        elif isinstance(ev, CallArgs):  # the arguments as they are written
            yield event(
                "response.function_call_arguments.delta",
                item_id=call_item_id,
                output_index=len(output),
                delta=ev.text,
            )
        elif isinstance(ev, ToolCall):
            for e in _call_done(event, ev, len(output)):
                yield e
            output.append(it.call_item(ev))
        elif isinstance(ev, PromptProgress):  # asked with llama-server's return_progress
            yield event(
                "response.in_progress",
                response=job.body("in_progress", []),
                prompt_progress=ev.wire(),
            )
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


def _call_done(event: Any, call: ToolCall, index: int) -> list[Named]:
    where = {"item_id": it.call_item(call)["id"], "output_index": index}
    return [
        event(
            "response.function_call_arguments.done",
            **where,
            arguments=call.arguments,
            name=call.name,
        ),
        event("response.output_item.done", output_index=index, item=it.call_item(call)),
    ]
