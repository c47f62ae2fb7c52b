"""Request bodies of Anthropic's Messages API (responses are built as plain dicts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from daemon.api.fields import MAX_STOPS, LoraList, ProtocolModel
from daemon.api.keepalive import KeepAlive

ToolName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")]


class ImageSource(ProtocolModel):
    """Where an image block's image is: `base64` data with its `media_type`, or a `url`."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(ProtocolModel):
    """One content block; which members matter depends on `type` (checked when translated)."""

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    # tool_use
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    # tool_result
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None
    # thinking / redacted_thinking (sent back in an assistant turn)
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    # image
    source: ImageSource | None = None


Block.model_rebuild()  # `content` nests blocks


class Message(ProtocolModel):
    """A conversation turn."""

    role: Literal["user", "assistant"]
    content: str | list[Block]


class TextBlock(ProtocolModel):
    """A text block of `system`."""

    type: Literal["text"]
    text: str


class ToolDef(ProtocolModel):
    """A client tool: name, description and the JSON schema of its input."""

    type: str | None = None  # "custom" or absent; server tools are refused when served
    name: ToolName
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolChoice(ProtocolModel):
    """`auto`, `any` (some tool), `tool` (the named one) or `none`."""

    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class Metadata(ProtocolModel):
    """Anthropic's `metadata`: an opaque user id."""

    user_id: Annotated[str, Field(max_length=256)] | None = None


class Thinking(ProtocolModel):
    """Extended thinking: `enabled` (with a budget), `adaptive` (no budget) or `disabled`."""

    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: Annotated[int, Field(ge=1)] | None = None


class OutputFormat(ProtocolModel):
    """`output_config.format`: JSON under a schema (structured outputs)."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(ProtocolModel):
    """`output_config`: the output format, and the effort a reasoning template is told."""

    format: OutputFormat | None = None
    effort: Literal["low", "medium", "high", "max"] | None = None


class _Conversation(ProtocolModel):
    """Fields shared by /v1/messages and /v1/messages/count_tokens."""

    model: Annotated[str, Field(min_length=1)]
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None

    def system_text(self) -> str | None:
        """The system prompt as one string."""
        if self.system is None or isinstance(self.system, str):
            return self.system
        return "\n\n".join(b.text for b in self.system)


class MessagesRequest(_Conversation):
    """POST /v1/messages."""

    max_tokens: Annotated[int, Field(ge=1, le=1_000_000)]
    stop_sequences: list[str] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=1.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Field(ge=0, lt=1000)] = 0
    metadata: Metadata | None = None
    stream: bool = False
    keep_alive: KeepAlive = None
    lora: LoraList | None = None  # edged's extension: LoRA adapters (daemon/core/adapters.py)

    @field_validator("stop_sequences")
    @classmethod
    def _stops(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return v

    @model_validator(mode="after")
    def _budget(self) -> MessagesRequest:
        # Anthropic's own rules: an enabled budget is required and below max_tokens.
        t = self.thinking
        if t is not None and t.type == "enabled":
            if t.budget_tokens is None:
                raise ValueError("thinking.budget_tokens: required when thinking is enabled")
            if t.budget_tokens >= self.max_tokens:
                raise ValueError("max_tokens must be greater than thinking.budget_tokens")
        return self


class CountTokensRequest(_Conversation):
    """POST /v1/messages/count_tokens."""
