"""Request bodies of `/api/generate` and `/api/generate-batch`."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from daemon.api.fields import LoraList, ProtocolModel, RepetitionPenalty, Temperature, TopK, TopP
from daemon.api.keepalive import KeepAlive
from daemon.config import GenerationDefaults

RequestId = Annotated[str, Field(min_length=1, max_length=256)]
# Images as Ollama's /api/generate sends them: base64 files, no type (the bytes say which).
# Each takes the place of one `<__media__>` marker in the prompt, or, with no marker, they
# go before the prompt's text. Like the prompt, ignored (once checked) when the id continues.
Images = list[str]


class GenerationConfig(ProtocolModel):
    """Per-request generation settings; unset fields fall back to the daemon's `.env`."""

    num_beams: Annotated[int, Field(ge=1)] | None = None
    do_sample: bool | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    max_new_tokens: Annotated[int, Field(ge=0, le=1_000_000)] | None = None
    repetition_penalty: RepetitionPenalty | None = None
    # Beam scores are sum_logprobs / length ** length_penalty: beyond ±10 the exponent only
    # decides the sign of overflow, never a useful preference.
    length_penalty: Annotated[float, Field(ge=-10.0, le=10.0, allow_inf_nan=False)] | None = None

    def resolve(self, defaults: GenerationDefaults) -> GenerationDefaults:
        """These settings over the configured defaults."""
        return defaults.model_copy(update=self.model_dump(exclude_none=True))


class GenerateRequest(ProtocolModel):
    """POST /api/generate."""

    request_id: RequestId
    prompt: str | None = None
    images: Images | None = None
    only_new_tokens: bool = True
    stream_response: bool = True
    generation_config: GenerationConfig | None = None
    model: str | None = None
    keep_alive: KeepAlive = None
    lora: LoraList | None = None


class BatchPrompt(ProtocolModel):
    """One entry of `/api/generate-batch`."""

    request_id: RequestId
    prompt: str | None = None
    images: Images | None = None


class GenerateBatchRequest(ProtocolModel):
    """POST /api/generate-batch."""

    prompts: Annotated[list[BatchPrompt], Field(min_length=1)]
    only_new_tokens: bool = True
    generation_config: GenerationConfig | None = None
    model: str | None = None
    keep_alive: KeepAlive = None
    lora: LoraList | None = None
