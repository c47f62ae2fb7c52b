"""The chat request every dialect translates into: messages, tools, format, reasoning.

Plain dataclasses: each dialect validates its own wire format with pydantic and builds these;
the core checks what no single dialect can (tool names, the format/grammar pairing) so every
dialect refuses the same things the same way.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from daemon.engine.mediainfo import MediaKind
from daemon.errors import InvalidRequest

Role = Literal["system", "user", "assistant", "tool"]
ROLES: frozenset[str] = frozenset({"system", "user", "assistant", "tool"})
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True)
class CallIn:
    """A tool call of an earlier assistant turn, sent back in the conversation."""

    name: str
    arguments: Any = "{}"  # JSON text or an object, as the client sent it
    id: str | None = None

    def arguments_object(self) -> Any:
        """The arguments as a value: templates lay them out themselves (Hugging Face's rule)."""
        if not isinstance(self.arguments, str):
            return self.arguments
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


# Where an image or audio clip goes in a message's text: libmtmd's default media marker,
# which the projector finds in the rendered prompt (tests check the two agree).
MEDIA_MARKER = "<__media__>"


@dataclass(frozen=True)
class MediaPart:
    """An image or audio clip of a message: the file's bytes (decoded from base64), their
    sha256 (hex), which identifies it to the caches, the type the client declared (a MIME
    type, or an audio format), and the size its header declares (read once, when the part is
    parsed; None where only decoding tells): an image's width and height, audio's seconds."""

    data: bytes
    digest: str
    mime: str | None = None
    width: int | None = None
    height: int | None = None
    # A file:// or http(s) URL not read yet (data and digest empty until
    # core/media.py's `resolve_media` reads it, if the daemon's policy allows).
    source: str | None = None
    kind: MediaKind = "image"
    seconds: float | None = None

    @property
    def pixels(self) -> int | None:
        """Declared width × height (None when the header does not say)."""
        if self.width is None or self.height is None:
            return None
        return self.width * self.height


@dataclass(frozen=True)
class Message:
    """One conversation turn, in the roles chat templates know.

    An image or audio clip is one MEDIA_MARKER in `content` and one entry of `media`, in the
    same order."""

    role: Role
    content: str = ""
    name: str | None = None
    calls: tuple[CallIn, ...] = ()
    call_id: str | None = None  # the call a `tool` turn answers
    reasoning: str | None = None  # an earlier assistant turn's thinking
    media: tuple[MediaPart, ...] = ()

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it."""
        msg: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.name is not None:
            msg["name"] = self.name
        if self.calls:
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": c.arguments_object()},
                }
                for c in self.calls
            ]
        if self.call_id is not None:
            msg["tool_call_id"] = self.call_id
        if self.reasoning is not None and self.role == "assistant":
            msg["reasoning_content"] = self.reasoning
        return msg

    @classmethod
    def of_template(cls, d: Mapping[str, Any]) -> Message:
        """A message kept in the template's dict form (a stored conversation) as a Message."""
        calls = tuple(
            CallIn(c["function"]["name"], c["function"].get("arguments", "{}"), c.get("id"))
            for c in d.get("tool_calls") or ()
        )
        role = "system" if d["role"] == "developer" else d["role"]
        return cls(
            role=role,
            content=d.get("content") or "",
            name=d.get("name"),
            calls=calls,
            call_id=d.get("tool_call_id"),
            reasoning=d.get("reasoning_content"),
        )

    def text(self) -> str:
        """What the turn says, calls included (what moderation reads)."""
        if not self.calls:
            return self.content
        calls = "\n".join(f"{c.name}({_json_text(c.arguments)})" for c in self.calls)
        return f"{self.content}\n{calls}" if self.content else calls


def _json_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


@dataclass(frozen=True)
class FunctionSpec:
    """A function the model may call: its name, what it does, its arguments' JSON schema."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class NamedTool:
    """A tool choice naming the one function the model must call."""

    name: str


ToolChoice = Literal["none", "auto", "required"] | NamedTool | None


@dataclass(frozen=True)
class JsonFormat:
    """The answer is JSON: an object of any shape, or valid under `schema`."""

    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class ChatRequest:
    """A conversation to answer, in no dialect's words.

    `param` names, in the dialect's words, the fields errors point at (`format`, `tools`)."""

    messages: tuple[Message, ...]
    tools: tuple[FunctionSpec, ...] = ()
    tool_choice: ToolChoice = None
    parallel_calls: bool = True
    format: JsonFormat | None = None
    grammar: str | None = None
    reasoning_effort: str | None = None
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    legacy_calls: bool = False  # OpenAI's `functions`: one call, answered as `function_call`
    format_param: str = "response_format"
    # A final assistant message is continued (a prefill: the answer goes on from its last
    # character) rather than closed and answered: True or False as the client says; None
    # continues one that holds text and no calls (Anthropic's rule, llama-server's default).
    continue_final: bool | None = None
    # False: the prompt ends where the conversation ends, no assistant turn opened (vLLM's and
    # transformers' `add_generation_prompt`); a final message continued never opens one.
    generation_prompt: bool = True

    @property
    def prefill(self) -> bool:
        """Whether the answer continues the final (assistant) message."""
        last = self.messages[-1]
        can = last.role == "assistant" and not last.calls and bool(last.content.strip())
        return can if self.continue_final is None else self.continue_final and can

    @property
    def media(self) -> tuple[MediaPart, ...]:
        """Every image and audio clip of the conversation, in prompt order."""
        return tuple(p for m in self.messages for p in m.media)

    def __post_init__(self) -> None:
        if not self.messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        if self.continue_final and self.generation_prompt and self.continue_final is not None:
            raise InvalidRequest(
                "continue_final_message and add_generation_prompt cannot both be true: the "
                "final message is either continued or closed and answered",
                param="continue_final_message",
            )
        seen: set[str] = set()
        for f in self.tools:
            if not _NAME.match(f.name):
                raise InvalidRequest(
                    f"tool name {f.name[:80]!r} must be 1-64 letters, digits, _ . or -",
                    param="tools",
                )
            if f.name in seen:
                raise InvalidRequest(f"two tools are named `{f.name}`", param="tools")
            seen.add(f.name)
        if self.grammar is not None and self.format is not None:
            raise InvalidRequest("use either grammar or response_format, not both", param="grammar")
