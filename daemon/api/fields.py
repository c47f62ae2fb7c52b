"""Sampling fields shared by every dialect, with the ranges of the API documents."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from daemon.engine.adapters.lora import MAX_SCALE

MAX_STOPS = 16
MAX_SEED = 2**63 - 1
MAX_LOGIT_BIAS = 300  # OpenAI's cap on logit_bias entries
TOKEN_ID = re.compile(r"[0-9]{1,10}")  # a token id as text: ASCII digits only


class ProtocolModel(BaseModel):
    """Base of every request body: unknown fields are ignored, as OpenAI clients expect."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


MAX_ADAPTERS = 16
Scale = Annotated[float, Field(ge=-MAX_SCALE, le=MAX_SCALE, allow_inf_nan=False)]


class LoraRef(ProtocolModel):
    """One adapter of a request, by name; no scale = the adapter's `--lora` scale."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    scale: Scale | None = None


class LoraId(ProtocolModel):
    """llama-server's form: the adapter's position in the server's list, and its scale."""

    id: Annotated[int, Field(ge=0, lt=1 << 20)]
    scale: Scale


LoraList = Annotated[list[LoraRef], Field(max_length=MAX_ADAPTERS)]
LoraIdList = Annotated[list[LoraId], Field(max_length=MAX_ADAPTERS)]


# Reasoning models (daemon/core/reasoning.py): both reach the chat template.
ReasoningEffort = Literal["none", "minimal", "low", "medium", "high"]
TemplateKwargs = Annotated[dict[str, JsonValue], Field(max_length=32)]

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(gt=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=0, lt=1000)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
RepetitionPenalty = Annotated[float, Field(ge=0.01, le=5.0)]


class SamplingFields(ProtocolModel):
    """Fields that choose the next token, by OpenAI's names (daemon/core/sampling.py maps
    them into the engine)."""

    temperature: Temperature = 1.0
    top_p: TopP = 1.0
    top_k: TopK = 0
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    typical_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    repetition_penalty: RepetitionPenalty = 1.0
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    seed: Annotated[int, Field(ge=0, le=MAX_SEED)] | None = None
    stop: str | list[str] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    # LoRA adapters of this request (see daemon/core/adapters.py); not a sampling field, but
    # every generation dialect carries it, so it lives with what they all share.
    lora: LoraList | None = None

    @field_validator("logit_bias")
    @classmethod
    def _bias_keys(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        """Keys are ASCII decimal token ids (`str.isdigit` would let "²" through to `int`);
        "5", "05" and " 5" are one token, so a second spelling is refused rather than
        stacking past ±100."""
        if v is None:
            return None
        if len(v) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} entries, got {len(v)}")
        out: dict[str, float] = {}
        for key, bias in v.items():
            digits = key.strip(" \t")
            if not TOKEN_ID.fullmatch(digits):
                raise ValueError(f"keys are decimal token ids, got {key!r}")
            token = str(int(digits))
            if token in out:
                raise ValueError(f"token {token} appears twice (as {key!r} and another key)")
            out[token] = bias
        return out

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences")
        return v
