"""Request bodies of llama-server's own routes (tools/server/README.md), with edged's ranges."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from daemon.api.fields import (
    MAX_LOGIT_BIAS,
    MAX_SEED,
    MAX_STOPS,
    TOKEN_ID,
    LoraIdList,
    Penalty,
    ProtocolModel,
    ReasoningEffort,
    RepetitionPenalty,
    Temperature,
    TemplateKwargs,
    TopK,
    TopP,
)
from daemon.api.messages import ChatMessage

MAX_PROMPTS = 64
MAX_BIAS_TEXT = 256  # characters of one text key of logit_bias

# A prompt: text, token ids, or a mix of both (llama-server concatenates the pieces).
Piece = int | str
PromptPiece = Annotated[list[Piece], Field(min_length=1)]

# Fields of llama-server's sampler that edged has no implementation of: a request that turns
# one on is refused (400) rather than served without it. The value that means "off" is fine.
_OFF: dict[str, Any] = {
    "mirostat": 0,
    "dynatemp_range": 0.0,
    "xtc_probability": 0.0,
    "dry_multiplier": 0.0,
    "top_n_sigma": -1.0,
    "n_keep": 0,
    "n_discard": 0,
}


class MediaPromptIn(ProtocolModel):
    """A prompt with media: the text holds one libmtmd marker (`<__media__>`) per file of
    `multimodal_data` (base64), which take their places in order (llama-server's form)."""

    prompt_string: str
    multimodal_data: Annotated[list[str], Field(max_length=64)] | None = None


Prompt = str | PromptPiece | MediaPromptIn


class CompletionRequest(ProtocolModel):
    """POST /completion."""

    prompt: (
        Prompt | Annotated[list[str | PromptPiece | MediaPromptIn], Field(max_length=MAX_PROMPTS)]
    )
    model: str | None = None
    n_predict: Annotated[int, Field(ge=-1, le=1_000_000)] = -1
    temperature: Temperature = 0.8
    top_k: TopK = 40
    top_p: TopP = 0.95
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    repeat_penalty: RepetitionPenalty = 1.0
    repeat_last_n: Annotated[int, Field(ge=-1, le=1_000_000)] = 64
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED)] = -1
    stop: Annotated[list[str], Field(max_length=MAX_STOPS)] = Field(default_factory=list)
    ignore_eos: bool = False
    logit_bias: list[list[Any]] | dict[str, Any] | None = None
    n_probs: Annotated[int, Field(ge=0, le=20)] = 0
    stream: bool = False
    cache_prompt: bool = True
    return_tokens: bool = False
    # Streamed: `prompt_progress` events while the prompt goes in, and `timings` on every event.
    return_progress: bool = False
    timings_per_token: bool = False
    grammar: str | None = None
    json_schema: dict[str, Any] | None = None
    id_slot: int = -1
    lora: LoraIdList | None = None
    image_data: list[Any] | None = None
    multimodal_data: list[Any] | None = None
    mirostat: int = 0
    dynatemp_range: float = 0.0
    xtc_probability: float = 0.0
    dry_multiplier: float = 0.0
    top_n_sigma: float = -1.0
    post_sampling_probs: bool = False
    n_keep: int = 0
    n_discard: int = 0

    @model_validator(mode="after")
    def _honourable(self) -> CompletionRequest:
        for name, off in _OFF.items():
            if getattr(self, name) != off:
                raise ValueError(f"{name} is not supported by edged; leave it at {off!r}")
        if self.image_data:
            raise ValueError(
                "image_data (the old form) is not supported: send the prompt as "
                '{"prompt_string": "... <__media__> ...", "multimodal_data": ["<base64>"]}'
            )
        if self.multimodal_data:
            raise ValueError(
                "multimodal_data goes inside the prompt object: "
                '{"prompt": {"prompt_string": "...", "multimodal_data": [...]}}'
            )
        if self.grammar is not None and self.json_schema is not None:
            raise ValueError("use either grammar or json_schema, not both")
        return self

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, v: list[list[Any]] | dict[str, Any] | None) -> Any:
        pairs = v.items() if isinstance(v, dict) else (v or [])
        if len(pairs) > MAX_LOGIT_BIAS:
            raise ValueError(f"logit_bias takes at most {MAX_LOGIT_BIAS} entries")
        for pair in pairs:
            if len(pair) != 2:
                raise ValueError("logit_bias entries are [token id or text, bias]")
            key, bias = pair
            if isinstance(key, bool) or not (
                (isinstance(key, int) and key >= 0) or (isinstance(key, str) and key)
            ):
                raise ValueError("a logit_bias key is a token id or a non-empty text")
            if isinstance(key, str) and len(key) > MAX_BIAS_TEXT:
                raise ValueError(f"a logit_bias text is at most {MAX_BIAS_TEXT} characters")
            number = isinstance(bias, int | float) and not isinstance(bias, bool)
            if not (bias is False or (number and -100 <= bias <= 100)):
                raise ValueError("a logit_bias value is a number in [-100, 100] or false")
        return v

    def bias_map(
        self, eog: frozenset[int], tokenize: Callable[[str], list[int]]
    ) -> dict[str, float]:
        """logit_bias as the shared fields take it: a text key (llama-server's `[["Hello",
        -1]]`) biases every token it tokenizes to; `false` bans a token, as ignore_eos does."""
        out: dict[str, float] = {}
        pairs = self.logit_bias.items() if isinstance(self.logit_bias, dict) else self.logit_bias
        for key, bias in pairs or []:
            value = -100.0 if bias is False else float(bias)
            if isinstance(key, int) or TOKEN_ID.fullmatch(key.strip()):
                out[str(int(key))] = value
            else:
                out.update({str(t): value for t in tokenize(key)})
        if self.ignore_eos:
            out.update({str(t): -100.0 for t in eog})
        return out


class ExtraFile(ProtocolModel):
    """One `input_extra` entry: context from another file."""

    filename: str = "tmp"
    text: str = ""


class InfillRequest(CompletionRequest):
    """POST /infill: `prompt` (optional) starts the middle part."""

    prompt: str = ""  # type: ignore[assignment]
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: Annotated[list[ExtraFile], Field(max_length=256)] = Field(default_factory=list)


class ApplyTemplateRequest(ProtocolModel):
    """POST /apply-template."""

    model: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    # As on /chat/completions: passed to the template (daemon/core/reasoning.py).
    reasoning_effort: ReasoningEffort | None = None
    chat_template_kwargs: TemplateKwargs | None = None
    # As on /chat/completions: a final assistant message continued (a prefill), or no turn.
    continue_final_message: bool | None = None
    add_generation_prompt: bool = True
