"""Request bodies of the OpenAI-compatible API (responses are built as plain dicts)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from daemon.api.fields import ProtocolModel, ReasoningEffort, SamplingFields, TemplateKwargs
from daemon.api.keepalive import KeepAlive
from daemon.api.messages import ChatMessage, FunctionDef, Tool
from daemon.errors import InvalidRequest

MaxTokens = Annotated[int, Field(ge=0, le=1_000_000)]


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
    # llama-server's streamed telemetry: `prompt_progress` chunks, `timings` on every chunk.
    return_progress: bool = False
    timings_per_token: bool = False
    # llama-server's debugging aid: `__verbose` (the rendered prompt, tokens, settings) in the
    # answer; None takes the daemon's --verbose.
    verbose: bool | None = None

    def shows_verbose(self, default: bool) -> bool:
        """Whether the answer carries `__verbose`: the request's say, else the daemon's."""
        return default if self.verbose is None else self.verbose

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
    # vLLM's and transformers' prompt switches: continue a final assistant message (a
    # prefill; unset, one holding text is continued, as llama-server does), open no turn.
    continue_final_message: bool | None = None
    add_generation_prompt: bool = True
    # llama-server's extension: a JSON schema the answer follows (as response_format's).
    json_schema: dict[str, Any] | None = None
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
