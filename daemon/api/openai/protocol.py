"""Request bodies of the OpenAI-compatible API (responses are built as plain dicts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from daemon.api.sampling import ProtocolModel, SamplingFields

MaxTokens = Annotated[int, Field(ge=0, le=1_000_000)]


class TextPart(ProtocolModel):
    """One part of a multi-part message content."""

    type: Literal["text"]
    text: str


class ChatMessage(ProtocolModel):
    """A conversation turn."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it."""
        role = "system" if self.role == "developer" else self.role
        msg: dict[str, Any] = {"role": role, "content": self.text()}
        if self.name is not None:
            msg["name"] = self.name
        return msg


class StreamOptions(ProtocolModel):
    """OpenAI `stream_options`."""

    include_usage: bool = False


class _Common(SamplingFields):
    """Fields shared by chat and text completions."""

    model: str | None = None
    max_tokens: MaxTokens | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None

    @property
    def token_limit(self) -> int | None:
        """`max_completion_tokens` wins over the older `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens


class CompletionRequest(_Common):
    """POST /v1/completions."""

    prompt: (
        str
        | Annotated[list[str], Field(min_length=1)]
        | Annotated[list[int], Field(min_length=1)]
        | Annotated[list[list[int]], Field(min_length=1)]
    )
    max_tokens: MaxTokens | None = 16

    @property
    def token_limit(self) -> int | None:
        """The completion budget."""
        return self.max_tokens
