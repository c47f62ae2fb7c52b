"""Request bodies of OpenAI's Responses API (responses are built as plain dicts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from daemon.api.fields import ProtocolModel, ReasoningEffort, SamplingFields, Temperature, TopP
from daemon.api.keepalive import KeepAlive


class ContentPart(ProtocolModel):
    """A part of a message's content: `input_text`, `output_text`, or `input_image` (a data
    URL in `image_url`; `detail` is accepted and has no effect)."""

    type: Annotated[str, Field(min_length=1)]
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None


class InputItem(ProtocolModel):
    """One item of `input`: a message, a `function_call` or a `function_call_output`.

    Members are checked per type when the item is translated, so an unknown type is a 400
    that names it rather than a schema error.
    """

    type: str | None = None  # absent means "message"
    id: str | None = None
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None
    status: str | None = None
    # reasoning items (an earlier turn's thinking sent back)
    summary: list[ContentPart] | None = None
    encrypted_content: str | None = None


class FunctionTool(ProtocolModel):
    """An entry of `tools`; only `function` tools can be served (checked when served)."""

    type: Annotated[str, Field(min_length=1)]
    name: (
        Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")] | None
    ) = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedChoice(ProtocolModel):
    """`tool_choice` naming one function (other types are refused when served)."""

    type: str
    name: str | None = None


class TextFormat(ProtocolModel):
    """`text.format`: plain text, any JSON object, or JSON under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(ProtocolModel):
    """The `text` member."""

    format: TextFormat | None = None
    verbosity: str | None = None


class ReasoningConfig(ProtocolModel):
    """`reasoning`: the effort told to a reasoning template. edged writes no summaries: any
    `summary` setting is accepted and answered with an empty summary."""

    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(SamplingFields):
    """POST /v1/responses."""

    model: str | None = None
    keep_alive: KeepAlive = None
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    metadata: Annotated[dict[str, str], Field(max_length=16)] | None = None
    store: bool = True
    previous_response_id: Annotated[str, Field(min_length=1)] | None = None
    stream: bool = False
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    reasoning: ReasoningConfig | None = None
    # llama-server's streamed telemetry: `prompt_progress` on response.in_progress events,
    # `timings` on every event.
    return_progress: bool = False
    timings_per_token: bool = False
    # Fields edged cannot honour: accepted by the schema so the refusal can name them.
    background: bool | None = None
    include: list[str] | None = None
    conversation: Any = None
    prompt: Any = None
    top_logprobs: int | None = None
    max_tool_calls: int | None = None
