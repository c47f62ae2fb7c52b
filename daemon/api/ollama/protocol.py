"""Request bodies of Ollama's API (docs/api.md), validated with the ranges edged applies."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from daemon.api.fields import (
    MAX_SEED,
    MAX_STOPS,
    LoraList,
    Penalty,
    ProtocolModel,
    RepetitionPenalty,
    Temperature,
    TopK,
    TopP,
)
from daemon.api.keepalive import KeepAlive
from daemon.api.messages import Tool

# Ollama's own defaults (api/types.go DefaultOptions), so a client sees the sampling it expects.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9
DEFAULT_REPEAT_PENALTY = 1.1
DEFAULT_REPEAT_LAST_N = 64

# Options that only tune how Ollama runs a model on its hardware. edged takes those from its
# own settings, so they are accepted and have no effect (the output does not depend on them).
RUNTIME_OPTIONS = frozenset(
    {
        "num_keep",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "low_vram",
        "numa",
        "vocab_only",
        "f16_kv",
        "logits_all",
        "embedding_only",
        "penalize_newline",
    }
)


class Options(ProtocolModel):
    """`options`: the sampling and context fields edged honours.

    Unknown keys are ignored, as Ollama ignores them; keys that would change the output but
    cannot be honoured (mirostat, tfs_z) are refused.
    """

    temperature: Temperature = DEFAULT_TEMPERATURE
    top_k: TopK = DEFAULT_TOP_K
    top_p: TopP = DEFAULT_TOP_P
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    num_predict: Annotated[int, Field(ge=-2, le=1_000_000)] | None = None
    stop: list[str] | str | None = None
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED)] | None = None
    repeat_penalty: RepetitionPenalty = DEFAULT_REPEAT_PENALTY
    repeat_last_n: Annotated[int, Field(ge=-1, le=1_000_000)] = DEFAULT_REPEAT_LAST_N
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    num_ctx: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    mirostat: Literal[0] = 0
    tfs_z: Literal[1] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: list[str] | str | None) -> list[str] | str | None:
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return v


Format = Literal["", "json"] | dict[str, Any] | None


class _Generating(ProtocolModel):
    """Fields shared by /api/chat and /api/generate."""

    model: Annotated[str, Field(min_length=1)] | None = None
    format: Format = None
    options: Options = Field(default_factory=Options)
    stream: bool = True
    keep_alive: KeepAlive = None
    # Reasoning models: on/off, or a level (newer Ollama) told to the template as effort.
    think: bool | Literal["low", "medium", "high"] | None = None
    lora: LoraList | None = None


class FunctionCallOut(ProtocolModel):
    """A call in an assistant message: Ollama sends arguments as an object."""

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class ToolCallOut(ProtocolModel):
    """One entry of a message's `tool_calls`."""

    function: FunctionCallOut


class Message(ProtocolModel):
    """A chat turn."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallOut] | None = None
    tool_name: str | None = None
    thinking: str | None = None


class ChatRequest(_Generating):
    """POST /api/chat."""

    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] | None = None


class GenerateRequest(_Generating):
    """POST /api/generate (Ollama's dialect: a body without `request_id`)."""

    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class EmbedRequest(ProtocolModel):
    """POST /api/embed."""

    model: Annotated[str, Field(min_length=1)] | None = None
    input: str | list[str] = Field(default_factory=list)
    truncate: bool = True
    dimensions: Annotated[int, Field(ge=1)] | None = None
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class EmbeddingsRequest(ProtocolModel):
    """POST /api/embeddings (the legacy single-prompt form)."""

    model: Annotated[str, Field(min_length=1)] | None = None
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: KeepAlive = None


class ModelRef(ProtocolModel):
    """A body naming one model: /api/show, /api/delete (`name` is the older spelling)."""

    model: Annotated[str, Field(min_length=1)] | None = None
    name: Annotated[str, Field(min_length=1)] | None = None
    verbose: bool = False

    @property
    def ref(self) -> str | None:
        """The model named, in either spelling."""
        return self.model or self.name


class PullRequest(ModelRef):
    """POST /api/pull: `model` is `[hf.co/]owner/repo[:TYPE]` on the Hugging Face hub or
    `import:NAME[:TYPE]` under the import directory; `replace` (edged's) overwrites a model of
    that name that came from another source."""

    insecure: bool = False
    stream: bool = True
    replace: bool = False


class CopyRequest(ProtocolModel):
    """POST /api/copy."""

    source: Annotated[str, Field(min_length=1)]
    destination: Annotated[str, Field(min_length=1, max_length=200)]
