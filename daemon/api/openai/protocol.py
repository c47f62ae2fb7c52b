"""Request bodies of the OpenAI-compatible API (responses are built as plain dicts)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue

from daemon.api.fields import ProtocolModel, SamplingFields
from daemon.api.keepalive import KeepAlive
from daemon.errors import InvalidRequest

MaxTokens = Annotated[int, Field(ge=0, le=1_000_000)]
# Reasoning models (daemon/core/reasoning.py): both reach the chat template.
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]
TemplateKwargs = Annotated[dict[str, JsonValue], Field(max_length=32)]


class TextPart(ProtocolModel):
    """One part of a multi-part message content."""

    type: Literal["text"]
    text: str


class FunctionCall(ProtocolModel):
    """The function an assistant turn called, with its arguments (a JSON text, or an object)."""

    name: str
    arguments: str | dict[str, Any] = "{}"

    def arguments_object(self) -> Any:
        """The arguments as a value, for templates that lay them out themselves."""
        if isinstance(self.arguments, dict):
            return self.arguments
        try:
            return json.loads(self.arguments)
        except ValueError:
            return self.arguments


class ToolCallIn(ProtocolModel):
    """A tool call of an earlier assistant turn, sent back in the conversation."""

    id: str | None = None
    type: str = "function"
    function: FunctionCall


class ChatMessage(ProtocolModel):
    """A conversation turn."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None
    # An earlier assistant turn's thinking (Qwen3-style templates re-render or drop it).
    reasoning_content: str | None = None

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
        if self.tool_calls:
            # Hugging Face's convention: templates get arguments as objects, not JSON text.
            msg["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {
                        "name": c.function.name,
                        "arguments": c.function.arguments_object(),
                    },
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None and role == "assistant":
            msg["reasoning_content"] = self.reasoning_content
        return msg


class FunctionDef(ProtocolModel):
    """A function the model may call: its name, what it does, and a JSON schema of its arguments."""

    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(ProtocolModel):
    """One entry of `tools`; only `function` tools exist (checked when the request is served)."""

    type: str
    function: FunctionDef


class NamedFunction(ProtocolModel):
    """The `function` member of a named tool choice."""

    name: str


class NamedToolChoice(ProtocolModel):
    """`tool_choice` naming the one function the model must call."""

    type: str = "function"
    function: NamedFunction


class StreamOptions(ProtocolModel):
    """OpenAI `stream_options`."""

    include_usage: bool = False


class JsonSchemaSpec(ProtocolModel):
    """OpenAI's `json_schema` member of `response_format`."""

    name: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(ProtocolModel):
    """`text`, `json_object`, OpenAI's `json_schema`, or Together's `json` with `schema`."""

    type: Literal["text", "json_object", "json_schema", "json"]
    json_schema: JsonSchemaSpec | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")

    def schema_or_none(self) -> dict[str, Any] | None:
        """The JSON schema to constrain to; None means any JSON object."""
        if self.type == "json_schema":
            return self.json_schema.schema_ if self.json_schema else None
        return self.schema_


class _Common(SamplingFields):
    """Fields shared by chat and text completions."""

    model: str | None = None
    keep_alive: KeepAlive = None
    max_tokens: MaxTokens | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    echo: bool = False
    response_format: ResponseFormat | None = None
    grammar: Annotated[str, Field(min_length=1)] | None = None

    @property
    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Common):
    """POST /v1/chat/completions."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    # OpenAI: a boolean plus top_logprobs; Together (seed 001): an integer count.
    logprobs: bool | Annotated[int, Field(ge=0, le=20)] | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    safety_model: Annotated[str, Field(min_length=1)] | None = None
    # Reasoning models (daemon/core/reasoning.py): passed to the chat template.
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: TemplateKwargs | None = None
    # OpenAI's deprecated spelling of tools/tool_choice: one call at most, answered as
    # `message.function_call` (see `with_legacy_functions`).
    functions: Annotated[list[FunctionDef], Field(min_length=1)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None

    @property
    def legacy_functions(self) -> bool:
        """Whether the request used `functions` and expects `function_call` answers."""
        return self.functions is not None

    def with_legacy_functions(self) -> ChatCompletionRequest:
        """`functions`/`function_call` as tools/tool_choice (one call), or self unchanged."""
        if self.functions is None:
            if self.function_call is not None:
                raise InvalidRequest("function_call needs functions", param="function_call")
            return self
        if self.tools is not None or self.tool_choice is not None:
            raise InvalidRequest(
                "use tools/tool_choice or the legacy functions/function_call, not both",
                param="functions",
            )
        fc = self.function_call
        choice = NamedToolChoice(function=fc) if isinstance(fc, NamedFunction) else fc
        return self.model_copy(
            update={
                "tools": [Tool(type="function", function=f) for f in self.functions],
                "tool_choice": choice,
                "parallel_tool_calls": False,
            }
        )

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token, or None when no log-probabilities are wanted."""
        if self.logprobs is None or self.logprobs is False:
            return None
        if self.logprobs is True:
            return self.top_logprobs or 0
        return int(self.logprobs)

    @property
    def together_logprobs(self) -> bool:
        """Together's integer form answers `{tokens, token_logprobs}`."""
        return self.logprobs is not None and not isinstance(self.logprobs, bool)

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
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    # `best_of` candidates per prompt are generated and the `n` most likely returned.
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    suffix: str | None = None  # refused unless empty: no insertion mode (yet)

    def check_unsupported(self) -> None:
        """Refuse what would change the answer and cannot be served as asked."""
        if self.best_of is not None:
            if self.best_of < self.n:
                raise InvalidRequest("best_of must be at least n", param="best_of")
            if self.best_of > self.n and self.stream:
                raise InvalidRequest("best_of cannot be streamed", param="best_of")
        if self.suffix:
            raise InvalidRequest("suffix (insertion) is not supported", param="suffix")

    @property
    def candidates(self) -> int:
        """Sequences generated per prompt: `best_of` when it asks for more than `n`."""
        return max(self.n, self.best_of or 0)

    @property
    def logprob_count(self) -> int | None:
        """Alternatives per token, or None when no log-probabilities are wanted."""
        return self.logprobs

    @property
    def token_limit(self) -> int | None:
        """The completion budget."""
        return self.max_tokens
