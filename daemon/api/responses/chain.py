"""A turn of a Responses conversation chain: the previous turn's KV state, the response object.

A turn that names `previous_response_id` renders the whole conversation as any chat would.
When the kept sequence of the previous turn is a prefix of that prompt, its KV state is
restored and only the rest (the new input) is prefilled; otherwise it is a full prefill.
The KV state is restored only on the very model file that computed it (`model_identity`,
the file's sha256): a chain continued after the model was replaced under the same name, or
under another model or adapter set, is recomputed from its text history instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from daemon.api.responses import items as it
from daemon.api.responses.protocol import ResponsesRequest
from daemon.api.responses.store import ResponseStore, StoredResponse, kv_key
from daemon.core.prompt import ChatPrompt
from daemon.core.turns import TurnEnd
from daemon.engine.errors import IdBusy
from daemon.engine.handle import RequestHandle
from daemon.engine.loading.loaded import LoadedModel
from daemon.engine.types import FinishReason, SavedSequence

# The ends of a turn worth continuing (a cut-off or failed one keeps nothing).
ENDED = (FinishReason.STOP, FinishReason.LENGTH)


def resume(
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
        jumps=saved.jumps,
    )
    return prompt, resume


@dataclass
class Job:
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
        """The response object with this status and output (usage comes with `finish`)."""
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
        # A turn with images keeps no KV state (see serving.py): its conversation is stored
        # all the same when it ended normally, and continues by rendering it again.
        imaged = self.chat.extras.media is not None and end.reason in ENDED
        if self.req.store and (saved is not None or imaged):
            # What the kept KV state holds, from the engine itself (chunks skip held-back tokens).
            tokens = list(saved.tokens + saved.pending) if saved is not None else []
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
