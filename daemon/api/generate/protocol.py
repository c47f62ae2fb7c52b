"""Request bodies of `/api/generate` and `/api/generate-batch`."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, field_validator

from daemon.api.keepalive import KeepAlive
from daemon.api.sampling import ProtocolModel, RepetitionPenalty, Temperature, TopK, TopP
from daemon.config import GenerationDefaults

RequestId = Annotated[str, Field(min_length=1, max_length=256)]


class GenerationConfig(ProtocolModel):
    """Per-request generation settings; unset fields fall back to the daemon's `.env`."""

    num_beams: Annotated[int, Field(ge=1)] | None = None
    do_sample: bool | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    max_new_tokens: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    repetition_penalty: RepetitionPenalty | None = None
    length_penalty: float | None = None

    @field_validator("length_penalty")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("length_penalty must be a finite number")
        return v

    def resolve(self, defaults: GenerationDefaults) -> GenerationDefaults:
        """These settings over the configured defaults."""
        return defaults.model_copy(update=self.model_dump(exclude_none=True))


class GenerateRequest(ProtocolModel):
    """POST /api/generate."""

    request_id: RequestId
    prompt: str | None = None
    only_new_tokens: bool = True
    stream_response: bool = True
    generation_config: GenerationConfig | None = None
    model: str | None = None
    keep_alive: KeepAlive = None


class BatchPrompt(ProtocolModel):
    """One entry of `/api/generate-batch`."""

    request_id: RequestId
    prompt: str | None = None


class GenerateBatchRequest(ProtocolModel):
    """POST /api/generate-batch."""

    prompts: Annotated[list[BatchPrompt], Field(min_length=1)]
    only_new_tokens: bool = True
    generation_config: GenerationConfig | None = None
    model: str | None = None
    keep_alive: KeepAlive = None
